"""Correlation across organisations: the sender learns which process took its message.

A message sent with ``"mode": "correlate"`` says so in its sealed body. The receiving
connector pushes it as any other; when a push target with ``receipts`` on takes it, or finally
refuses it, the receiver owes the sender a *correlation receipt* (:mod:`.owed`, written in the
transaction that records the push outcome). The ``receipts`` job seals each as an envelope of
its own, encrypted for the sender and signed by the receiver, and hands it to the platform with
retries (:mod:`.sending`). The sender's sync opens it like any envelope (signature checked
against the receiver's pinned key first) and records what it says on the message, with its
event (:mod:`.told`). The API waits for that, or for matching messages, in :mod:`.waiting`.
"""
