"""The job table: every background job of a connector, declared as data in one place.

A :class:`Job` says what the runner needs to know and nothing else: its name, its kind, how
often it runs or how long it rests, whether only one replica may run it at a time, and the work,
an async callable injected by the caller (``connector.runtime`` hands in the services' methods;
this package never imports them). :func:`connector_jobs` is the table itself:

==============  ========  ==========================================  =========  ==========
job             kind      interval                                    singleton  on stop
==============  ========  ==========================================  =========  ==========
sync            interval  ``sync.interval``                           inbox      finish run
long-poll       loop      rests ``receipt_gathering`` after a page    inbox      cancel
                          of receipts only; the unit itself waits
                          at the platform (``sync.long_poll_wait``)
outbox          loop      rests up to ``outbox_idle`` when nothing    no         finish
                          is due, or until woken                                 batch
delivery        loop      rests up to ``delivery_idle`` when nothing  no         finish
                          is due, or until woken (a commit that                  batch
                          wrote events)
receipts        loop      rests up to ``receipts_idle`` when nothing  no         finish
                          is due, or until woken (a commit that                  batch
                          owed a correlation receipt)
housekeeping    interval  ``housekeeping.interval``                   yes        finish run
==============  ========  ==========================================  =========  ==========

On stop (arq's ``handle_sig_wait_for_completion``), a running batch is finished and its outcomes
recorded before the loop exits, within the grace period; only then is anything cancelled.

The sync and the long-poll both pull the one platform inbox, so they share the lease ``inbox``:
whichever replica holds it runs both, and no other replica pulls (or acknowledges) at the same
time.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

DELIVERY_IDLE = 1.0
"""Seconds the push delivery rests when nothing was due; a commit that wrote events wakes it,
and deliveries that other replicas wrote or whose retry comes due are found within this."""

RECEIPTS_IDLE = 1.0
"""Seconds the correlation receipts job rests when nothing was due; a commit that owed one
wakes it, and retries (or receipts other replicas owed) are found within this."""

OUTBOX_IDLE = 1.0
"""Seconds the outbox rests when nothing was due; a new send wakes it at once."""

RECEIPT_GATHERING = 0.1
"""Seconds the long-poll rests after a short page holding only delivery receipts. Nobody waits
on receipts to the millisecond, so while sends are busy they gather into larger pages (one
transaction each) instead of a page per receipt."""


class JobKind(enum.Enum):
    INTERVAL = "interval"
    """Runs every ``interval`` seconds (APScheduler), never two at once; the first run at once."""
    LOOP = "loop"
    """Runs unit after unit until stopped; each unit answers a :class:`Pace`."""


class Pace(enum.Enum):
    """What a loop's unit of work says about the next one."""

    AGAIN = "again"
    """More may be waiting: run the next unit at once."""
    IDLE = "idle"
    """Nothing was left to do: rest up to ``interval`` seconds, or until :meth:`wake`."""
    GATHER = "gather"
    """A thin unit: rest ``gather`` seconds, so that the next one finds more to do at once."""


class OnStop(enum.Enum):
    """What stopping the scheduler does to a loop's unit of work that is running."""

    FINISH = "finish"
    """Let the unit finish (within the stop's grace period), then exit: no half-done batch."""
    CANCEL = "cancel"
    """Cancel it at once: for a unit that mostly waits and is safe to redo from its start."""


Work = Callable[[], Awaitable[object]]
"""A job's work: an async callable; a loop's answers a :class:`Pace` (anything else is AGAIN)."""


@dataclass(frozen=True)
class Job:
    """One line of the job table."""

    name: str
    kind: JobKind
    work: Work
    interval: float
    """INTERVAL: seconds from the start of one run to the next. LOOP: the longest rest after a
    unit that found nothing to do (``Pace.IDLE``)."""
    singleton: bool = False
    """Run on one replica at a time: only while this replica holds the job's lease."""
    lease: str | None = None
    """The lease of a singleton job; jobs that must run on the same replica name the same
    lease. None: the job's own name."""
    gather: float = 0.0
    """LOOP: seconds to rest after a unit that answered ``Pace.GATHER``."""
    on_stop: OnStop = OnStop.FINISH
    """LOOP: finish or cancel a running unit on stop. An interval run always finishes (within
    the grace period); a rest always ends at once."""

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"job {self.name}: interval must be positive")
        if self.gather < 0:
            raise ValueError(f"job {self.name}: gather must not be negative")
        if self.lease is not None and not self.singleton:
            raise ValueError(f"job {self.name}: a lease is for singleton jobs")

    @property
    def lease_name(self) -> str | None:
        """The lease this job runs under, or None when any replica may run it."""
        if not self.singleton:
            return None
        return self.lease or self.name


INBOX_LEASE = "inbox"


def connector_jobs(
    *,
    sync: Work,
    long_poll: Work | None,
    outbox: Work,
    delivery: Work,
    receipts: Work,
    housekeeping: Work,
    sync_interval: float,
    housekeeping_interval: float,
    outbox_idle: float = OUTBOX_IDLE,
    receipt_gathering: float = RECEIPT_GATHERING,
) -> list[Job]:
    """A connector's jobs; ``long_poll`` None when ``sync.long_poll`` is off."""
    jobs = [
        Job("sync", JobKind.INTERVAL, sync, sync_interval, singleton=True, lease=INBOX_LEASE),
        Job("housekeeping", JobKind.INTERVAL, housekeeping, housekeeping_interval, singleton=True),
        Job("outbox", JobKind.LOOP, outbox, outbox_idle),
        Job("delivery", JobKind.LOOP, delivery, DELIVERY_IDLE),
        Job("receipts", JobKind.LOOP, receipts, RECEIPTS_IDLE),
    ]
    if long_poll is not None:
        jobs.append(
            Job(
                "long-poll",
                JobKind.LOOP,
                long_poll,
                # The unit itself waits at the platform (sync.long_poll_wait); it never idles.
                interval=1.0,
                singleton=True,
                lease=INBOX_LEASE,
                gather=receipt_gathering,
                # Waiting at the platform most of the time; a page cut short is fetched again,
                # since nothing is acknowledged before it is stored.
                on_stop=OnStop.CANCEL,
            )
        )
    return jobs
