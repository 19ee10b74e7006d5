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

__all__ = [
    "InboxItem",
    "InboxPage",
    "PeerIdentity",
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
