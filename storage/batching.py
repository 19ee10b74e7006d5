"""Group commit: many small concurrent writes share one transaction and a few statements.

SQLite has one writer, and through aiosqlite every statement costs several thread hops. Writing
each accepted message in its own transaction with its own statements caps a connector at about
a hundred sends a second. A :class:`Coalescer` instead collects the items that arrive while a
commit is in flight and writes them all with one call of a bulk function in the next
transaction, so throughput grows with concurrency while each caller still gets its own result
only after its data is committed.

If a shared transaction fails, the batch is split in halves and retried, so one bad item (a
unique-key conflict, say) fails alone. Bulk functions must therefore keep all their effects in
the session and build their ORM objects afresh on every call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from storage.engine import Sessions

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741 - item
R = TypeVar("R")
T = TypeVar("T")

WriteMany = Callable[[AsyncSession, Sequence[I]], Awaitable[Sequence[R]]]
Work = Callable[[AsyncSession], Awaitable[T]]


class Coalescer(Generic[I, R]):
    """Items submitted concurrently are written together by ``write_many``, in one commit."""

    def __init__(
        self, sessions: Sessions, write_many: WriteMany[I, R], *, max_batch: int = 500
    ) -> None:
        self._sessions = sessions
        self._write_many = write_many
        self._max_batch = max_batch
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> R:
        """Write ``item`` with whatever else is pending; its result once committed."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="coalescer")
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            async with self._sessions.begin() as session:
                results = await self._write_many(session, [item for item, _ in batch])
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


class WriteBatcher(Coalescer[Work[Any], Any]):
    """A coalescer of arbitrary units of work, run one after another in the shared transaction.

    Units should add ORM objects rather than execute statements, so that the commit's single
    flush writes a batch with one multi-row statement per table.
    """

    def __init__(self, sessions: Sessions, *, max_batch: int = 256) -> None:
        super().__init__(sessions, _run_all, max_batch=max_batch)

    async def run(self, work: Work[T]) -> T:
        result: T = await self.submit(work)
        return result


async def _run_all(session: AsyncSession, works: Sequence[Work[Any]]) -> list[Any]:
    return [await work(session) for work in works]


def _settle(
    future: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
