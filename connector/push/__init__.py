"""Push: events delivered to webhooks, BPM engines and brokers, at least once.

``routing`` writes a delivery row per (event, subscription) in the event's own transaction;
``delivery`` is the job that claims and sends them (``sender`` for HTTP, ``brokers`` for
message brokers) in a subscription's ``formats`` and records each attempt; ``subscriptions``
holds the rules of subscriptions and their deliveries (the API's and the config's);
``signing``, ``auth`` and ``url_policy`` are what every HTTP request goes through.
"""
