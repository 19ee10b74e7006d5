"""SendLoad: the outbox gives way only while sends crowd in."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack

from connector.services.load import SendLoad


async def test_no_pause_without_a_crowd() -> None:
    load = SendLoad(crowded=3)
    with load.sending(), load.sending():
        assert not load.crowded
        assert await load.give_way(worked=10.0) is False  # would hang the test if it paused


async def test_a_crowd_makes_background_work_pause_until_it_thins() -> None:
    load = SendLoad(crowded=3, calm_after=0.05, share=0.25)
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(load.sending())
        assert load.crowded
        pausing = asyncio.create_task(load.give_way(worked=60.0))
        await asyncio.sleep(0.01)
        assert not pausing.done()  # still crowded: paused
    # The crowd has gone; the pause ends within calm_after, long before 3 x 60 s.
    assert await asyncio.wait_for(pausing, 10) is True
    assert not load.crowded


async def test_a_pause_is_bounded_by_the_share() -> None:
    load = SendLoad(crowded=1, calm_after=60.0, share=0.5)
    with load.sending():
        # Crowded for the next minute, but 1 ms of work at a 50 % share earns a 1 ms pause.
        assert await asyncio.wait_for(load.give_way(worked=0.001), 10) is True
