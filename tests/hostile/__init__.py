"""Attacker-style tests for issue 8: hostile peers and a malicious platform."""
