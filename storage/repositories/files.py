"""Files: own uploads and received attachments."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import File


async def get(session: AsyncSession, file_id: str, *, include_deleted: bool = False) -> File | None:
    file = await session.get(File, file_id)
    if file is None or (file.deleted_at is not None and not include_deleted):
        return None
    return file


async def get_many(
    session: AsyncSession, file_ids: Iterable[str], *, include_deleted: bool = False
) -> dict[str, File]:
    """Files by id; deleted ones (kept as tombstones, their ids stay taken) only if asked."""
    ids = list(file_ids)
    if not ids:
        return {}
    query = select(File).where(File.id.in_(ids))
    if not include_deleted:
        query = query.where(File.deleted_at.is_(None))
    return {file.id: file for file in await session.scalars(query)}


def add(session: AsyncSession, file: File) -> None:
    session.add(file)


async def page(
    session: AsyncSession,
    *,
    is_own: bool | None,
    limit: int,
    before: tuple[datetime, str] | None,
) -> list[File]:
    """Newest first, keyset-paginated on (created_at, id)."""
    query = select(File).where(File.deleted_at.is_(None))
    if is_own is not None:
        query = query.where(File.is_own.is_(is_own))
    if before is not None:
        created_at, file_id = before
        query = query.where(
            or_(
                File.created_at < created_at,
                and_(File.created_at == created_at, File.id < file_id),
            )
        )
    query = query.order_by(File.created_at.desc(), File.id.desc()).limit(limit)
    return list(await session.scalars(query))


async def due_for_removal(
    session: AsyncSession, *, now: datetime, created_before: datetime | None, limit: int
) -> list[File]:
    """Files past their ``expires_at``, or (with a retention) created before the cutoff."""
    due = File.expires_at <= now
    if created_before is not None:
        due = or_(due, File.created_at < created_before)
    query = select(File).where(File.deleted_at.is_(None), due).limit(limit)
    return list(await session.scalars(query))


async def mark_deleted(session: AsyncSession, file_ids: list[str], at: datetime) -> None:
    if file_ids:
        await session.execute(update(File).where(File.id.in_(file_ids)).values(deleted_at=at))
