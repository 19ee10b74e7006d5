"""The message lifecycle: which moves exist, and what each tells the event feed."""

from __future__ import annotations

import pytest

from connector.schemas import EventOut, MessageOut
from connector.services import lifecycle
from connector.services.lifecycle import NEW, EventType, IllegalTransition, MessageStatus

S, E = MessageStatus, EventType


def test_each_status_is_reachable_from_a_new_message() -> None:
    reached, frontier = set(), [NEW]
    while frontier:
        source = frontier.pop()
        for s, target in lifecycle.TRANSITIONS:
            if s is source and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(MessageStatus)


@pytest.mark.parametrize(
    ("source", "target", "events"),
    [
        (NEW, S.QUEUED, ()),
        (NEW, S.RECEIVED, (E.RECEIVED,)),
        (NEW, S.REJECTED, (E.REJECTED,)),
        (S.QUEUED, S.SENT, (E.SENT,)),
        (S.QUEUED, S.EXPIRED, (E.FAILED,)),
        (S.SENT, S.DELIVERED, (E.DELIVERED,)),
        (S.SENT, S.FAILED, (E.FAILED,)),
        ("queued", "failed", (E.FAILED,)),  # plain strings, as read from a row, work too
    ],
)
def test_allowed_moves_name_their_events(
    source: MessageStatus | str | None, target: MessageStatus | str, events: tuple[EventType, ...]
) -> None:
    assert lifecycle.events(source, target) == events


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (S.DELIVERED, S.SENT),  # nothing goes back
        (S.FAILED, S.DELIVERED),  # a late receipt does not revive a failed message
        (S.EXPIRED, S.SENT),
        (S.RECEIVED, S.REJECTED),  # incoming messages do not move after they are stored
        (S.QUEUED, S.RECEIVED),  # nor do outgoing ones cross over
        (NEW, S.SENT),  # every send is queued first (the outbox holds it)
    ],
)
def test_other_moves_are_refused(source: MessageStatus | None, target: MessageStatus) -> None:
    with pytest.raises(IllegalTransition):
        lifecycle.events(source, target)


def test_sources_give_the_conditional_writes_their_where_clause() -> None:
    assert set(lifecycle.sources(S.DELIVERED)) == {S.SENT}
    assert set(lifecycle.sources(S.FAILED)) == {S.QUEUED, S.SENT}
    assert set(lifecycle.sources(S.EXPIRED)) == {S.QUEUED}
    assert lifecycle.sources(S.RECEIVED) == ()


def test_the_api_shows_the_lifecycle_s_names() -> None:
    status = MessageOut.model_json_schema()["$defs"]["MessageStatus"]["enum"]
    kinds = EventOut.model_json_schema()["$defs"]["EventType"]["enum"]
    assert set(status) == {s.value for s in MessageStatus}
    assert set(kinds) == {e.value for e in EventType}
