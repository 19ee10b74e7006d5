"""Leases: several replicas on one database, and each singleton job runs on one of them.

Each replica has a random holder id, made at start. Every ``renew_every`` seconds it takes or
renews each lease its singleton jobs run under, for ``ttl`` seconds, in one atomic statement
(``storage.repositories.leases``): a lease is taken only when it has expired or is ours already.
A replica that stops renewing (it died, hangs, or cannot reach the database) loses the lease
once ``ttl`` has passed since its last renewal, and another replica takes it at its next try:

- the holder stops starting units of work at most ``ttl`` after its last successful renewal
  (counted on its own monotonic clock from before the renewal was sent, so never later than
  the database's expiry);
- a standby takes over at most ``ttl + renew_every`` seconds after the holder's last renewal
  (defaults 8 s and 2 s: within 10 s), and at once (its next try) after a clean stop, which
  gives the leases back;
- a replica restarted after a crash takes its own leases back at once: a lease names its
  holder's *instance* (host and data directory), and only one process at a time can run on a
  data directory (``connector.data_dir.data_dir_lock``), so a lease of our instance under
  another holder id belongs to a process that is gone. A single connector thus resumes its
  inbox as soon as it is back, as it did before leases.

A unit already running when its lease is lost is not interrupted: there is no fencing token.
The work itself stays safe when two replicas overlap for a moment (the inbox recognises an
envelope stored twice by its (sender, id); outbox rows are claimed, not leased).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from storage.engine import Sessions
from storage.repositories import leases as leases_repo

log = logging.getLogger(__name__)

RENEW_EVERY = 2.0
"""Seconds between two renewals (or tries to take a lease held by another replica)."""
TTL = 8.0
"""Seconds a lease lasts after its last renewal: four renewals may fail before it is lost."""


def instance_id(data_dir: Path) -> str:
    """Where a replica runs: its host and (a digest of) its data directory."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return f"{socket.gethostname()[:100]}:{digest}"


def new_holder_id(instance: str) -> str:
    """A random id for one start of a replica, readable by operators: instance, pid, random."""
    return f"{instance}/{os.getpid()}/{secrets.token_hex(6)}"


class Leases:
    """The leases one replica wants, kept taken and renewed by :meth:`keep`."""

    def __init__(
        self,
        sessions: Sessions,
        names: Iterable[str],
        *,
        instance: str | None = None,
        holder: str | None = None,
        ttl: float = TTL,
        renew_every: float = RENEW_EVERY,
    ) -> None:
        if not 0 < renew_every < ttl:
            raise ValueError("leases must be renewed more often than they expire")
        self.instance = instance or f"{socket.gethostname()[:100]}:{secrets.token_hex(6)}"
        self.holder = holder or new_holder_id(self.instance)
        self._sessions = sessions
        self._names = sorted(set(names))
        self._ttl = ttl
        self._renew_every = renew_every
        self._valid_until: dict[str, float] = {}
        self._holders: dict[str, str | None] = dict.fromkeys(self._names)
        self._held = {name: asyncio.Event() for name in self._names}
        self.tried = asyncio.Event()
        """Set once the first round of tries has an answer (taken, refused or failed)."""
        self._failing = False

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def held(self, name: str) -> bool:
        """Whether this replica holds ``name`` now (by its last renewal, within ``ttl``)."""
        return time.monotonic() < self._valid_until.get(name, 0.0)

    def holder_of(self, name: str) -> str | None:
        """Who held ``name`` at the last look (this replica's id when it is us)."""
        return self.holder if self.held(name) else self._holders.get(name)

    async def wait_held(self, name: str) -> None:
        """Return once this replica holds ``name``."""
        while not self.held(name):
            self._held[name].clear()
            await self._held[name].wait()

    async def renew(self) -> None:
        """One round: take or renew every lease; note who holds the others."""
        sent = time.monotonic()
        try:
            async with self._sessions.begin() as session:
                taken = {
                    name: await leases_repo.acquire(
                        session, name, self.holder, self._ttl, instance=self.instance
                    )
                    for name in self._names
                }
            lost = [name for name, ok in taken.items() if not ok]
            if lost:
                async with self._sessions() as session:
                    others = await leases_repo.holders(session, lost)
            else:
                others = {}
        except Exception as exc:
            if not self._failing:
                log.warning("leases: cannot renew (%s); held ones lapse after %s s", exc, self._ttl)
            self._failing = True
            return
        finally:
            self.tried.set()
        self._failing = False
        for name, ok in taken.items():
            was_held = self.held(name)
            if ok:
                self._valid_until[name] = sent + self._ttl
                self._holders[name] = self.holder
                self._held[name].set()
                if not was_held:
                    log.info("leases: %s taken by this replica (%s)", name, self.holder)
                continue
            self._valid_until.pop(name, None)
            held = others.get(name)
            self._holders[name] = held.holder if held else None
            if was_held:
                log.warning("leases: %s lost to %s", name, self._holders[name])

    async def keep(self) -> None:
        """Renew every ``renew_every`` seconds until cancelled."""
        while True:
            await self.renew()
            await asyncio.sleep(self._renew_every)

    async def release(self) -> None:
        """Give back what this replica holds, so that a standby takes it over at once."""
        held = [name for name in self._names if self.held(name)]
        self._valid_until.clear()
        if not held:
            return
        try:
            async with self._sessions.begin() as session:
                await leases_repo.release(session, held, self.holder)
        except Exception as exc:
            log.warning("leases: cannot give back %s (%s); they lapse in %ss", held, exc, self._ttl)
