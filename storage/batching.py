"""Group commit: many small concurrent write transactions share one commit.

SQLite has one writer and every commit costs a WAL write; 32 concurrent API requests each
committing alone queue up behind each other. :class:`WriteBatcher` runs the writes that arrive
while a commit is in flight together in the next transaction, so throughput grows with
concurrency while each caller still gets its own result only after its data is durable.

A unit of work is an async function taking the session; it must keep its side effects inside
that session and build its ORM objects inside (it may run more than once: if a shared
transaction fails, the batch is split and retried, so one bad unit cannot fail the others).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from storage.engine import Sessions

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[AsyncSession], Awaitable[T]]


class WriteBatcher:
    def __init__(self, sessions: Sessions, *, max_batch: int = 256) -> None:
        self._sessions = sessions
        self._max_batch = max_batch
        self._pending: list[tuple[Work[Any], asyncio.Future[Any]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def run(self, work: Work[T]) -> T:
        """Run ``work`` in a transaction shared with other concurrent writers; its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((work, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="write-batcher")
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[Work[Any], asyncio.Future[Any]]]) -> None:
        """Commit ``batch`` together; if that fails, bisect so only the bad unit fails."""
        try:
            results = []
            async with self._sessions.begin() as session:
                for work, _ in batch:
                    results.append(await work(session))
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], error=exc)
                return
            log.debug("shared transaction of %d failed (%s); splitting it", len(batch), exc)
            middle = len(batch) // 2
            await self._commit(batch[:middle])
            await self._commit(batch[middle:])
            return
        except BaseException as exc:  # cancelled while committing: tell every waiter
            for _, future in batch:
                _settle(future, error=exc)
            raise
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result=result)


def _settle(
    future: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
