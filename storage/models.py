"""The connector's tables.

Relationships use ``lazy="raise_on_sql"`` so that a forgotten eager load fails loudly instead
of blocking the event loop with hidden I/O.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from storage.types import BigIntKey, UTCDateTime

_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[str]: JSON()}


class Identity(Base):
    """This connector's own identity; private halves sealed with the master key."""

    __tablename__ = "identity"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(64), unique=True)
    signing_public: Mapped[bytes] = mapped_column(LargeBinary)
    exchange_public: Mapped[bytes] = mapped_column(LargeBinary)
    signing_private_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    exchange_private_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    registered_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class Peer(Base):
    """Public keys of other identities, cached; the address is derived from the signing key."""

    __tablename__ = "peers"

    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    signing_public: Mapped[bytes] = mapped_column(LargeBinary)
    exchange_public: Mapped[bytes] = mapped_column(LargeBinary)
    fetched_at: Mapped[datetime]


class ApiKey(Base):
    """An API key; only its SHA-256 is stored. Refused after ``expires_at`` and once revoked."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]]
    source: Mapped[str] = mapped_column(String(16))  # config | cli | bootstrap
    sealed_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class File(Base):
    """A file: our own upload, or one received as an attachment. The key is sealed at rest."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_created_at_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    is_own: Mapped[bool] = mapped_column(Boolean)
    filename: Mapped[str] = mapped_column(Text)
    mimetype: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigIntKey)
    cipher_size: Mapped[int] = mapped_column(BigIntKey)
    chunk_size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    title: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]]
    key_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # Every filter has an index ending in seq, so a filtered page is an index range scan
        # in seq order that stops after `limit` rows instead of a sort of all matches.
        Index("ix_messages_direction_seq", "direction", "seq"),
        Index("ix_messages_name_seq", "name", "seq"),
        Index("ix_messages_correlation_key_seq", "correlation_key", "seq"),
        Index("ix_messages_sender_seq", "sender", "seq"),
        Index("ix_messages_status_seq", "status", "seq"),
        Index("ix_messages_id", "id"),
        # A message is one sender's id: another sender may pick the same id, and a rejected
        # item (whose sender was never proven) takes no id at all, so it cannot squat one.
        Index(
            "uq_messages_direction_sender_id",
            "direction",
            "sender",
            "id",
            unique=True,
            sqlite_where=text("status <> 'rejected'"),
            postgresql_where=text("status <> 'rejected'"),
        ),
    )

    seq: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(20))  # indexed by uq (id, direction)
    direction: Mapped[str] = mapped_column(String(8))  # incoming | outgoing
    sender: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(255))
    correlation_key: Mapped[str | None] = mapped_column(String(255))
    content: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    received_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    read_at: Mapped[datetime | None]
    tags: Mapped[list[str]]
    error: Mapped[str | None] = mapped_column(Text)
    digest: Mapped[bytes | None] = mapped_column(LargeBinary)
    """SHA-256 of the envelope (connector.crypto.receipts.envelope_digest): what a delivery
    receipt is checked against (outgoing), what it is signed over (incoming)."""
    mode: Mapped[str] = mapped_column(String(10), default="publish", server_default="publish")
    """``publish`` or ``correlate``: whether the sender asked for a correlation receipt."""
    correlation: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    """Outgoing, correlate mode: what the recipient's correlation receipt said, once known
    (``connector.correlation.model.Correlation`` as JSON)."""

    recipients: Mapped[list[MessageRecipient]] = relationship(
        lazy="raise_on_sql", cascade="all, delete-orphan", order_by="MessageRecipient.position"
    )
    attachments: Mapped[list[MessageAttachment]] = relationship(
        lazy="raise_on_sql", cascade="all, delete-orphan", order_by="MessageAttachment.position"
    )


class MessageRecipient(Base):
    __tablename__ = "message_recipients"
    __table_args__ = (Index("ix_message_recipients_address_seq", "address", "message_seq"),)

    message_seq: Mapped[int] = mapped_column(
        ForeignKey("messages.seq", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(64))
    delivered_at: Mapped[datetime | None]


class MessageAttachment(Base):
    __tablename__ = "message_attachments"

    message_seq: Mapped[int] = mapped_column(
        ForeignKey("messages.seq", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id"), index=True)

    file: Mapped[File] = relationship(lazy="raise_on_sql")


class OutboxEntry(Base):
    """A message waiting to be (re)sent; retries are data, not loops.

    ``envelope`` is None while the message could not be sealed yet (recipients' keys unknown
    and the platform unreachable at acceptance); the outbox seals and stores it on first try.
    """

    __tablename__ = "outbox"

    message_seq: Mapped[int] = mapped_column(
        ForeignKey("messages.seq", ondelete="CASCADE"), primary_key=True
    )
    envelope: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    last_error: Mapped[str | None] = mapped_column(Text)


class CorrelationReceipt(Base):
    """A correlation receipt this connector owes a sender, until the platform has taken it.

    Written in the transaction that records the push outcome it tells of (so none is lost or
    told twice for one outcome); sent by the ``receipts`` job as an envelope of its own under
    ``id``, sealed once and kept (``envelope``), so a retry sends the same bytes.
    """

    __tablename__ = "correlation_receipts"

    seq: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(20), unique=True)
    peer: Mapped[str] = mapped_column(String(64))
    """The sender of the message: the receipt's recipient."""
    message_id: Mapped[str] = mapped_column(String(20))
    digest: Mapped[bytes] = mapped_column(LargeBinary)
    """The digest of the envelope the message came in: what the sender checks it against."""
    status: Mapped[str] = mapped_column(String(16))
    result: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime]
    envelope: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    expires_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)


class Event(Base):
    """The event feed; written in the same transaction as the change it describes."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_type_seq", "type", "seq"),)

    seq: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(24), unique=True)
    type: Mapped[str] = mapped_column(String(40))
    message_id: Mapped[str | None] = mapped_column(String(20), index=True)
    created_at: Mapped[datetime]
    data: Mapped[dict[str, Any]]


class SyncState(Base):
    """A single row: where the pull from the platform stands."""

    __tablename__ = "sync_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cursor: Mapped[int] = mapped_column(BigIntKey, default=0)
    last_run_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    last_received: Mapped[int] = mapped_column(Integer, default=0)
    last_receipts: Mapped[int] = mapped_column(Integer, default=0)
    last_rejected: Mapped[int] = mapped_column(Integer, default=0)
    total_received: Mapped[int] = mapped_column(BigIntKey, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    """Pulls that failed in a row since the last success; ``/health`` fails the sync check."""


class Lease(Base):
    """Which replica runs a singleton job (``scheduler.leases``): ``holder`` until ``expires_at``.

    The holder renews it while it works; once it stops renewing (it died, or hangs), another
    replica takes it after ``expires_at``. Taking and renewing are one conditional statement.
    ``instance`` names the holder's host and data directory, which one process at a time can
    run on (``connector.data_dir.data_dir_lock``): a restart there takes the lease back at once.
    """

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(160))
    instance: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class IdempotencyKey(Base):
    """An ``Idempotency-Key`` of a send, per API key: which message it made, and the answer.

    Written in the transaction that accepts the message, so a key never points at nothing and
    a message sent under a key never lacks it. ``response_status`` is filled in once the
    request has its answer (at once when that is 202); None means the request is still in
    flight, or the process died before answering. Not a foreign key to the message: message
    retention is a separate concern, and rows are pruned after ``expires_at``.
    """

    __tablename__ = "idempotency_keys"

    api_key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str] = mapped_column(String(20))
    response_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


_CONFIG_SOURCE = text("source = 'config'")


class Webhook(Base):
    """A push subscription (DESIGN.md section 7), from config or from the API, with its health.

    ``auth_sealed`` and ``secret_sealed`` are sealed by the caller with the master key; this
    table never sees them in clear. A config subscription is its (url, format): replicas that
    mirror the same ``[[webhooks]]`` entry at start-up meet on one row (``uq_webhooks_url_format``
    covers config rows only; API subscriptions may repeat a url and format).
    """

    __tablename__ = "webhooks"
    __table_args__ = (
        Index(
            "uq_webhooks_url_format",
            "url",
            "format",
            unique=True,
            sqlite_where=_CONFIG_SOURCE,
            postgresql_where=_CONFIG_SOURCE,
        ),
        CheckConstraint(
            "format IN ('standard', 'camunda7', 'camunda8', 'spiff')", name="ck_webhooks_format"
        ),
        CheckConstraint("source IN ('config', 'api')", name="ck_webhooks_source"),
        CheckConstraint(
            "breaker_state IN ('closed', 'open', 'half_open')", name="ck_webhooks_breaker_state"
        ),
    )

    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    format: Mapped[str] = mapped_column(String(16))
    events: Mapped[list[str]]
    filter: Mapped[dict[str, Any]]
    """``name``, ``correlationKey``, ``sender``: each absent or the value to match."""
    headers: Mapped[dict[str, Any]]
    options: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'"))
    """Engine formats' options: ``correlate_by``, ``tenant_id``, ``process_group``."""
    auth_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    enabled: Mapped[bool] = mapped_column(Boolean)
    ordered: Mapped[bool] = mapped_column(Boolean)
    receipts: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(8))  # config | api
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_success_at: Mapped[datetime | None]
    failure_streak: Mapped[int] = mapped_column(Integer, default=0)
    breaker_state: Mapped[str] = mapped_column(String(16), default="closed")
    breaker_until: Mapped[datetime | None]


class Delivery(Base):
    """One event for one subscription: at most one row per (event, subscription).

    ``pending`` waits for its first attempt, ``failed`` for a retry after a failed attempt
    (both are *open*: due at ``next_attempt_at``); ``succeeded`` and ``dead`` are final until a
    retry by hand or a replay opens the row again. A claimer pushes ``next_attempt_at`` and
    ``claimed_until`` forward while it sends (storage.repositories.deliveries.claim_due).
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("event_seq", "webhook_id"),
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        # A subscription's deliveries by seq (the API's pages), and its open ones by event
        # order (an ordered subscription's oldest open delivery).
        Index("ix_deliveries_webhook_id_seq", "webhook_id", "seq"),
        Index("ix_deliveries_webhook_id_status_event_seq", "webhook_id", "status", "event_seq"),
        CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed', 'dead')", name="ck_deliveries_status"
        ),
    )

    seq: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(20), unique=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_seq: Mapped[int] = mapped_column(BigIntKey, ForeignKey("events.seq", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    round: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    """Moves on when the endpoint said "not correlated yet" and when the delivery is opened
    again by hand or by a replay; unchanged by a failed attempt (its answer may be lost)."""
    next_attempt_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class DeliveryAttempt(Base):
    """One request of a delivery, as it went: for the operations API and for debugging."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (Index("ix_delivery_attempts_delivery_seq_id", "delivery_seq", "id"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    delivery_seq: Mapped[int] = mapped_column(
        BigIntKey, ForeignKey("deliveries.seq", ondelete="CASCADE")
    )
    started_at: Mapped[datetime]
    duration_ms: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    """Up to 20 kB of the response (the caller truncates)."""
