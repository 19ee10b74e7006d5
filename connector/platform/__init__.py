"""Client for the platform (the backbone protocol, see docs/protocol.md)."""

from connector.platform.client import PlatformClient, PlatformDownload
from connector.platform.errors import (
    IdentityNotFound,
    PlatformError,
    PlatformFileNotFound,
    PlatformFileTooLarge,
    PlatformRejected,
    PlatformUnavailable,
    RecipientNotFound,
)
from connector.platform.models import InboxItem, InboxPage, PeerIdentity

__all__ = [
    "IdentityNotFound",
    "InboxItem",
    "InboxPage",
    "PeerIdentity",
    "PlatformClient",
    "PlatformDownload",
    "PlatformError",
    "PlatformFileNotFound",
    "PlatformFileTooLarge",
    "PlatformRejected",
    "PlatformUnavailable",
    "RecipientNotFound",
]
