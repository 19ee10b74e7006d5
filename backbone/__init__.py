"""The reference Platform server ("backbone"): identities, challenge auth, ciphertext blobs,
message relay, per-recipient inboxes with long-poll, delivery receipts.

Stands alone: imports nothing from ``connector``. See ``docs/protocol.md``.
"""
