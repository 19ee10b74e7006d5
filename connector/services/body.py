"""The plaintext inside an envelope: what sender and receiver agree on, validated on arrival.

Only the two connectors ever see this; the platform carries it encrypted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel


class _BodyModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class AttachmentDescriptor(_BodyModel):
    id: Annotated[str, StringConstraints(pattern=r"^FIL[A-Za-z0-9]{17}$")]
    filename: str
    mimetype: str
    size: Annotated[int, Field(ge=0)]
    cipher_size: Annotated[int, Field(ge=0)]
    chunk_size: Annotated[int, Field(ge=1)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    key: Annotated[str, StringConstraints(min_length=44, max_length=44)]
    """The file key, base64; it opens the ciphertext the platform holds."""
    title: str | None = None
    description: str | None = None
    tags: list[str] = []
    expires_at: datetime | None = None


class MessageBody(_BodyModel):
    content: dict[str, Any]
    name: str | None = None
    correlation_key: str | None = None
    tags: list[str] = []
    attachments: list[AttachmentDescriptor] = []

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)
