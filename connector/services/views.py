"""Turn stored rows into the API's shapes. Events embed these, so services need them too."""

from __future__ import annotations

from typing import Any

from connector.schemas import CorrelationOut, FileOut, MessageOut, RecipientOut
from storage.models import File
from storage.repositories.messages import MessageRecord


def file_out(file: File) -> FileOut:
    return FileOut(
        id=file.id,
        filename=file.filename,
        mimetype=file.mimetype,
        size=file.size,
        sha256=file.sha256,
        title=file.title,
        description=file.description,
        tags=list(file.tags),
        owner=file.owner,
        is_own=file.is_own,
        created_at=file.created_at,
        expires_at=file.expires_at,
    )


def message_out(message: MessageRecord) -> MessageOut:
    return MessageOut(
        id=message.id,
        direction=message.direction,
        sender=message.sender,
        recipients=[
            RecipientOut(address=r.address, delivered_at=r.delivered_at) for r in message.recipients
        ],
        name=message.name,
        correlation_key=message.correlation_key,
        content=message.content,
        attachments=[file_out(file) for file in message.files],
        status=message.status,
        created_at=message.created_at,
        sent_at=message.sent_at,
        received_at=message.received_at,
        expires_at=message.expires_at,
        read_at=message.read_at,
        tags=list(message.tags),
        error=message.error,
        mode=message.mode,
        correlation=(
            None
            if message.correlation is None
            else CorrelationOut.model_validate(message.correlation)
        ),
    )


def message_json(message: MessageRecord) -> dict[str, Any]:
    """The Message as JSON-ready data, the ``data`` of its events."""
    return message_out(message).model_dump(mode="json", by_alias=True)
