"""Broker publishers (issue 13): one module per broker behind the ``Publisher`` protocol."""
