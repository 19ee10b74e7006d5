"""Push: webhook signing and delivery (issue 11)."""
