"""Client for the platform (the backbone protocol, see docs/protocol.md)."""

from connector.platform.client import PlatformClient, PlatformDownload
from connector.platform.errors import (
    PlatformError,
    PlatformFileNotFoundError,
    PlatformFileTooLargeError,
    PlatformIdentityNotFoundError,
    PlatformQuotaExceededError,
    PlatformRecipientNotFoundError,
    PlatformRejectedError,
    PlatformUnavailableError,
)
from connector.platform.models import InboxItem, InboxPage, PeerIdentity
from connector.platform.protocol import Download, Platform

__all__ = [
    "Download",
    "InboxItem",
    "InboxPage",
    "PeerIdentity",
    "Platform",
    "PlatformClient",
    "PlatformDownload",
    "PlatformError",
    "PlatformFileNotFoundError",
    "PlatformFileTooLargeError",
    "PlatformIdentityNotFoundError",
    "PlatformQuotaExceededError",
    "PlatformRecipientNotFoundError",
    "PlatformRejectedError",
    "PlatformUnavailableError",
]
