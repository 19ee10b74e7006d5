"""Sealing an outgoing message into a signed envelope for its recipients.

Used when a send is accepted, and by the outbox for a message accepted while the recipients'
keys could not be looked up (the platform was unreachable): the message is stored first and
sealed once the keys are known, under the id chosen at acceptance.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connector.clock import isoformat
from connector.crypto.envelope import seal_envelope
from connector.crypto.keys import IdentityKeys
from connector.services.body import AttachmentDescriptor, CorrelationReceiptBody, MessageBody
from connector.services.files import FileService
from connector.services.peers import PeerDirectory
from storage.models import File
from storage.repositories.messages import MessageRecord


@dataclass(frozen=True)
class Draft:
    """Everything that goes into an envelope."""

    message_id: str
    recipients: list[str]
    content: dict[str, Any]
    name: str | None
    correlation_key: str | None
    tags: list[str]
    attachments: list[File]
    created_at: datetime
    expires_at: datetime
    mode: str = "publish"

    @classmethod
    def of(cls, message: MessageRecord) -> Draft:
        assert message.expires_at is not None
        return cls(
            message_id=message.id,
            recipients=[r.address for r in message.recipients],
            content=message.content or {},
            name=message.name,
            correlation_key=message.correlation_key,
            tags=list(message.tags),
            attachments=message.files,
            created_at=message.created_at,
            expires_at=message.expires_at,
            mode=message.mode,
        )


class Sealer:
    def __init__(self, keys: IdentityKeys, peers: PeerDirectory, files: FileService) -> None:
        self._keys = keys
        self._peers = peers
        self._files = files

    async def check_recipients(self, addresses: list[str]) -> None:
        """Raises RecipientNotFound (or PlatformUnavailable) as :meth:`seal` would, seals nothing.

        For sends sealed later by the outbox: an unknown recipient is still refused at once.
        """
        await self._peers.recipients(addresses)

    async def seal(self, draft: Draft) -> dict[str, Any]:
        """The signed envelope; raises RecipientNotFound or PlatformUnavailable from the lookup."""
        peers = await self._peers.recipients(draft.recipients)
        body = MessageBody(
            content=draft.content,
            name=draft.name,
            correlation_key=draft.correlation_key,
            tags=draft.tags,
            attachments=[self._descriptor(file) for file in draft.attachments],
            mode=draft.mode,
        ).to_json()
        return seal_envelope(
            sender=self._keys,
            message_id=draft.message_id,
            recipients={address: peers[address].exchange_public for address in draft.recipients},
            body=body,
            created_at=isoformat(draft.created_at),
            expires_at=isoformat(draft.expires_at),
        )

    async def seal_receipt(
        self,
        receipt_id: str,
        peer: str,
        receipt: CorrelationReceiptBody,
        created_at: datetime,
        expires_at: datetime,
    ) -> dict[str, Any]:
        """A correlation receipt in an envelope of its own, for ``peer`` alone; raises as
        :meth:`seal` does."""
        peers = await self._peers.recipients([peer])
        body = MessageBody(content={}, correlation_receipt=receipt).to_json()
        return seal_envelope(
            sender=self._keys,
            message_id=receipt_id,
            recipients={peer: peers[peer].exchange_public},
            body=body,
            created_at=isoformat(created_at),
            expires_at=isoformat(expires_at),
        )

    def _descriptor(self, file: File) -> AttachmentDescriptor:
        """What a recipient needs to fetch and open an attachment; travels only encrypted."""
        return AttachmentDescriptor(
            id=file.id,
            filename=file.filename,
            mimetype=file.mimetype,
            size=file.size,
            cipher_size=file.cipher_size,
            chunk_size=file.chunk_size,
            sha256=file.sha256,
            key=base64.b64encode(self._files.file_key(file)).decode(),
            title=file.title,
            description=file.description,
            tags=list(file.tags),
            expires_at=file.expires_at,
        )
