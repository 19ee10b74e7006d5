"""Messages with their recipients and attachments."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Table,
    bindparam,
    delete,
    func,
    insert,
    literal,
    null,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from storage.engine import Sessions, unit_of_work
from storage.models import File, Message, MessageAttachment, MessageRecipient

_MESSAGES: Table = Message.__table__  # type: ignore[assignment]
_RECIPIENTS: Table = MessageRecipient.__table__  # type: ignore[assignment]
_ATTACHMENTS: Table = MessageAttachment.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Recipient:
    address: str
    delivered_at: datetime | None = None


@dataclass
class MessageRecord:
    """A message as plain data, without ORM bookkeeping: the one shape of a message that
    services, views and events use, whether it is being inserted or was read back."""

    id: str
    direction: str
    sender: str
    status: str
    created_at: datetime
    recipients: list[Recipient]
    files: list[File]
    """The attachments' file rows, in order."""
    name: str | None = None
    correlation_key: str | None = None
    content: dict[str, Any] | None = None
    received_at: datetime | None = None
    expires_at: datetime | None = None
    tags: list[str] = field(default_factory=list)
    error: str | None = None
    sent_at: datetime | None = None
    read_at: datetime | None = None
    seq: int | None = None
    digest: bytes | None = None
    mode: str = "publish"
    correlation: dict[str, Any] | None = None


async def insert_many(session: AsyncSession, messages: Sequence[MessageRecord]) -> None:
    """Insert messages with their recipients and attachments: three statements in all.

    Seqs come from the local sequence (SQLite) or from one INSERT ... RETURNING in order
    (PostgreSQL); they are set on the given objects.
    """
    if not messages:
        return
    rows: list[dict[str, Any]] = [
        {
            "id": m.id,
            "direction": m.direction,
            "sender": m.sender,
            "name": m.name,
            "correlation_key": m.correlation_key,
            "content": m.content,
            "status": m.status,
            "created_at": m.created_at,
            "sent_at": m.sent_at,
            "received_at": m.received_at,
            "expires_at": m.expires_at,
            "read_at": m.read_at,
            "tags": m.tags,
            "error": m.error,
            "digest": m.digest,
            "mode": m.mode,
            "correlation": m.correlation,
        }
        for m in messages
    ]
    sequence = unit_of_work(session).message_seqs
    first = sequence.take() if sequence is not None else None
    if first is not None and sequence is not None:
        seqs = [first, *(sequence.take() or 0 for _ in messages[1:])]
        for row, seq in zip(rows, seqs, strict=True):
            row["seq"] = seq
        await session.execute(insert(_MESSAGES), rows)
    else:
        result = await session.execute(
            insert(_MESSAGES).returning(_MESSAGES.c.seq, sort_by_parameter_order=True),
            rows,
        )
        seqs = list(result.scalars())
    recipients, attachments = [], []
    for message, seq in zip(messages, seqs, strict=True):
        message.seq = seq
        recipients += [
            {"message_seq": seq, "position": i, "address": r.address, "delivered_at": None}
            for i, r in enumerate(message.recipients)
        ]
        attachments += [
            {"message_seq": seq, "position": i, "file_id": file_id}
            for i, file_id in enumerate(file.id for file in message.files)
        ]
    if recipients:
        await session.execute(insert(_RECIPIENTS), recipients)
    if attachments:
        await session.execute(insert(_ATTACHMENTS), attachments)


@dataclass(frozen=True)
class MessageFilter:
    direction: str | None = None
    peer: str | None = None
    name: str | None = None
    correlation_key: str | None = None
    status: str | None = None
    unread: bool | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


async def get(
    session: AsyncSession, message_id: str, direction: str | None = None
) -> MessageRecord | None:
    """The message with this id (and ``direction``, when given).

    Ids are unique per sender, so several rows may carry one: an outgoing copy wins over an
    incoming one (sent to self) unless ``direction`` picks one, an accepted one over a rejected
    one, and the first stored wins among the rest (a later sender of the same id cannot take it
    over).
    """
    query = select(Message.seq).where(Message.id == message_id)
    if direction is not None:
        query = query.where(Message.direction == direction)
    seq = await session.scalar(
        query.order_by(
            Message.direction.desc(), (Message.status == "rejected").asc(), Message.seq
        ).limit(1)
    )
    if seq is None:
        return None
    return (await records(session, [seq]))[0]


async def outgoing_outcome(
    session: AsyncSession, message_id: str
) -> tuple[str, dict[str, Any] | None] | None:
    """Status and correlation of our outgoing message ``message_id``; one indexed read (what a
    correlate-mode send looks at after each commit while it waits)."""
    row = (
        await session.execute(
            select(Message.status, Message.correlation).where(
                Message.id == message_id, Message.direction == "outgoing"
            )
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def set_read_at(session: AsyncSession, seq: int, at: datetime | None) -> None:
    await session.execute(update(_MESSAGES).where(_MESSAGES.c.seq == seq).values(read_at=at))


@dataclass(frozen=True)
class Known:
    """An incoming message already stored under a (sender, id): enough to answer a repeat."""

    status: str
    digest: bytes | None
    received_at: datetime | None


async def known_incoming(
    session: AsyncSession, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], list[Known]]:
    """Stored incoming rows for these ``(sender, id)`` pairs, accepted ones first."""
    wanted = set(keys)
    if not wanted:
        return {}
    found: dict[tuple[str, str], list[Known]] = {}
    ids = sorted({message_id for _, message_id in wanted})
    for start in range(0, len(ids), _IN_SLICE):
        rows = await session.execute(
            select(Message.sender, Message.id, Message.status, Message.digest, Message.received_at)
            .where(Message.id.in_(ids[start : start + _IN_SLICE]))
            .where(Message.direction == "incoming")
            .order_by((Message.status == "rejected").asc(), Message.seq)
        )
        for sender, message_id, status, digest, received_at in rows:
            if (sender, message_id) in wanted:
                found.setdefault((sender, message_id), []).append(
                    Known(status, digest, received_at)
                )
    return found


_IN_SLICE = 500  # bound parameters per IN list (SQLite allows 32,766 in all)


async def set_digests(session: AsyncSession, digests: dict[int, bytes]) -> None:
    """Record the envelope digest of outgoing messages by seq; one executemany."""
    if digests:
        await session.execute(
            update(_MESSAGES)
            .where(_MESSAGES.c.seq == bindparam("s"))
            .values(digest=bindparam("d")),
            [{"s": seq, "d": digest} for seq, digest in digests.items()],
        )


async def set_correlations(session: AsyncSession, correlations: dict[int, dict[str, Any]]) -> None:
    """Record what correlation receipts said, by seq; one executemany."""
    if correlations:
        await session.execute(
            update(_MESSAGES)
            .where(_MESSAGES.c.seq == bindparam("s"))
            .values(correlation=bindparam("c")),
            [{"s": seq, "c": said} for seq, said in correlations.items()],
        )


async def outgoing(session: AsyncSession, ids: Iterable[str]) -> list[MessageRecord]:
    """Our outgoing messages with these ids."""
    wanted = list(ids)
    if not wanted:
        return []
    seqs = await session.scalars(
        select(Message.seq).where(Message.id.in_(wanted), Message.direction == "outgoing")
    )
    return await records(session, list(seqs))


async def start_local_sequence(sessions: Sessions) -> None:
    """On SQLite, hand out message seqs in-process from the highest stored one on."""
    if sessions.kw["bind"].dialect.name != "sqlite":
        return
    async with sessions() as session:
        highest = await session.scalar(select(func.max(Message.seq)))
    sessions.message_seqs.start(int(highest or 0))


def _with_peer(address: str) -> CompoundSelect[tuple[int]]:
    """Seqs of messages exchanged with ``address``: sent by it, or sent by us to it.

    Written as ``seq IN (index lookup UNION ALL index lookup)`` rather than ``sender = x OR
    EXISTS (...)``: the OR form makes SQLite walk the whole table in seq order (35 ms at a
    million messages), this one touches only that peer's rows (under 2 ms).
    """
    sent_to = (
        select(MessageRecipient.message_seq)
        .join(Message, Message.seq == MessageRecipient.message_seq)
        .where(MessageRecipient.address == address, Message.direction == "outgoing")
    )
    received_from = select(Message.seq).where(
        Message.sender == address, Message.direction == "incoming"
    )
    return union_all(sent_to, received_from)


async def page(
    session: AsyncSession,
    filters: MessageFilter,
    *,
    limit: int,
    after_seq: int | None,
    descending: bool,
) -> list[MessageRecord]:
    """One page, keyset-paginated on the insertion sequence, with recipients and attachments.

    Read with plain column queries into records (three or four statements a page): building
    ORM objects for a page of 50 cost about as much as running the queries.
    """
    query = select(_MESSAGES)
    if filters.direction:
        query = query.where(Message.direction == filters.direction)
    if filters.peer:
        query = query.where(Message.seq.in_(_with_peer(filters.peer)))
    if filters.name:
        query = query.where(Message.name == filters.name)
    if filters.correlation_key:
        query = query.where(Message.correlation_key == filters.correlation_key)
    if filters.status:
        query = query.where(Message.status == filters.status)
    if filters.unread is True:
        query = query.where(Message.read_at.is_(None))
    elif filters.unread is False:
        query = query.where(Message.read_at.is_not(None))
    if filters.created_after:
        query = query.where(Message.created_at > filters.created_after)
    if filters.created_before:
        query = query.where(Message.created_at < filters.created_before)
    if after_seq is not None:
        query = query.where(Message.seq < after_seq if descending else Message.seq > after_seq)
    order = Message.seq.desc() if descending else Message.seq.asc()
    rows = (await session.execute(query.order_by(order).limit(limit))).mappings().all()
    return await _with_parts(session, rows)


async def records(session: AsyncSession, seqs: Sequence[int]) -> list[MessageRecord]:
    """The messages with these seqs (in seq order), with their recipients and files."""
    if not seqs:
        return []
    query = select(_MESSAGES).where(Message.seq.in_(list(seqs))).order_by(Message.seq)
    return await _with_parts(session, (await session.execute(query)).mappings().all())


async def _with_parts(session: AsyncSession, rows: Sequence[Any]) -> list[MessageRecord]:
    """Records for message rows, with recipients, attachment ids and files (1-2 queries)."""
    if not rows:
        return []
    seqs = [row["seq"] for row in rows]
    recipients: dict[int, list[Recipient]] = {seq: [] for seq in seqs}
    attached: dict[int, list[str]] = {seq: [] for seq in seqs}
    # Recipients and attachments in one statement: through aiosqlite every statement costs
    # several thread hops, more than these index lookups themselves.
    parts = union_all(
        select(
            _RECIPIENTS.c.message_seq,
            _RECIPIENTS.c.position,
            literal("r").label("part"),
            _RECIPIENTS.c.address.label("value"),
            _RECIPIENTS.c.delivered_at,
        ).where(_RECIPIENTS.c.message_seq.in_(seqs)),
        select(
            _ATTACHMENTS.c.message_seq,
            _ATTACHMENTS.c.position,
            literal("a").label("part"),
            _ATTACHMENTS.c.file_id.label("value"),
            null().label("delivered_at"),
        ).where(_ATTACHMENTS.c.message_seq.in_(seqs)),
    ).order_by("message_seq", "part", "position")
    for seq, _position, part, value, delivered_at in await session.execute(parts):
        if part == "r":
            recipients[seq].append(Recipient(value, delivered_at))
        else:
            attached[seq].append(value)
    wanted = {file_id for ids in attached.values() for file_id in ids}
    files = (
        {f.id: f for f in await session.scalars(select(File).where(File.id.in_(wanted)))}
        if wanted
        else {}
    )
    return [
        MessageRecord(
            **{key: row[key] for key in _RECORD_COLUMNS},
            recipients=recipients[row["seq"]],
            files=[files[file_id] for file_id in attached[row["seq"]] if file_id in files],
        )
        for row in rows
    ]


_RECORD_COLUMNS = (
    "seq",
    "id",
    "direction",
    "sender",
    "status",
    "created_at",
    "name",
    "correlation_key",
    "content",
    "received_at",
    "expires_at",
    "tags",
    "error",
    "sent_at",
    "read_at",
    "digest",
    "mode",
    "correlation",
)


@dataclass
class RecipientState:
    message_seq: int
    position: int
    address: str
    delivered_at: datetime | None


@dataclass
class OutgoingState:
    seq: int
    id: str
    status: str
    digest: bytes | None
    recipients: list[RecipientState]


async def outgoing_states(session: AsyncSession, ids: Iterable[str]) -> list[OutgoingState]:
    """Status, digest and recipients of our outgoing messages with these ids; two queries."""
    wanted = list(ids)
    if not wanted:
        return []
    rows = (
        await session.execute(
            select(Message.seq, Message.id, Message.status, Message.digest).where(
                Message.id.in_(wanted), Message.direction == "outgoing"
            )
        )
    ).all()
    recipients: dict[int, list[RecipientState]] = {row[0]: [] for row in rows}
    if recipients:
        for seq, position, address, delivered_at in await session.execute(
            select(
                _RECIPIENTS.c.message_seq,
                _RECIPIENTS.c.position,
                _RECIPIENTS.c.address,
                _RECIPIENTS.c.delivered_at,
            ).where(_RECIPIENTS.c.message_seq.in_(list(recipients)))
        ):
            recipients[seq].append(RecipientState(seq, position, address, delivered_at))
    return [
        OutgoingState(seq, message_id, status, digest, recipients[seq])
        for seq, message_id, status, digest in rows
    ]


async def set_delivered(session: AsyncSession, delivered: Sequence[RecipientState]) -> None:
    """Store ``delivered_at`` of these recipients; one executemany."""
    if delivered:
        await session.execute(
            update(_RECIPIENTS)
            .where(
                _RECIPIENTS.c.message_seq == bindparam("seq"),
                _RECIPIENTS.c.position == bindparam("pos"),
            )
            .values(delivered_at=bindparam("at")),
            [{"seq": r.message_seq, "pos": r.position, "at": r.delivered_at} for r in delivered],
        )


async def mark_delivered(
    session: AsyncSession, seqs: Sequence[int], at: datetime, *, sources: Collection[str]
) -> set[int]:
    """From one of ``sources`` to delivered (``sent_at`` set if it was not); the seqs changed."""
    if not seqs:
        return set()
    result = await session.execute(
        update(_MESSAGES)
        .where(_MESSAGES.c.seq.in_(list(seqs)), _MESSAGES.c.status.in_(list(sources)))
        .values(status="delivered", sent_at=func.coalesce(_MESSAGES.c.sent_at, at))
        .returning(_MESSAGES.c.seq)
    )
    return set(result.scalars())


async def mark_refused(
    session: AsyncSession, errors: dict[int, str], at: datetime, *, sources: Collection[str]
) -> list[int]:
    """From one of ``sources`` to failed, with the recipient's refusal as ``error``; the seqs
    changed."""
    changed = []
    for seq, error in errors.items():
        result = await session.execute(
            update(_MESSAGES)
            .where(_MESSAGES.c.seq == seq, _MESSAGES.c.status.in_(list(sources)))
            .values(status="failed", error=error, sent_at=func.coalesce(_MESSAGES.c.sent_at, at))
            .returning(_MESSAGES.c.seq)
        )
        changed += list(result.scalars())
    return changed


async def finish_queued_many(
    session: AsyncSession, seqs: list[int], *, status: str, at: datetime, error: str | None
) -> set[int]:
    """Move the still-queued ones of ``seqs`` to ``status`` (sent_at set when sent).

    One statement for all; returns the seqs that changed.
    """
    if not seqs:
        return set()
    values: dict[str, object] = {"status": status, "error": error}
    if status == "sent":
        values["sent_at"] = at
    result = await session.execute(
        update(Message)
        .where(Message.seq.in_(seqs), Message.status == "queued")
        .values(**values)
        .returning(Message.seq)
        .execution_options(synchronize_session=False)
    )
    return set(result.scalars())


async def delete_finished_before(session: AsyncSession, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` messages created before ``cutoff`` that are no longer queued."""
    doomed = (
        select(Message.seq)
        .where(Message.created_at < cutoff, Message.status != "queued")
        .limit(limit)
        .scalar_subquery()
    )
    result = await session.execute(delete(Message).where(Message.seq.in_(doomed)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
