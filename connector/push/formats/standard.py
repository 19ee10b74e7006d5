"""``standard``: the Standard Webhooks body ``{"id", "type", "timestamp", "data"}``, as is."""

from __future__ import annotations

from typing import Any

from connector.clock import isoformat
from connector.push.formats.base import EngineOptions, Push, PushRequest, json_answer
from connector.push.sender import AttemptResult, Delivered


class Standard:
    name = "standard"

    def request(self, url: str, options: EngineOptions, push: Push) -> PushRequest:
        payload = {
            "id": push.event_id,
            "type": push.event_type,
            "timestamp": isoformat(push.created_at),
            "data": push.data,
        }
        return PushRequest(url, payload)

    def classify(self, result: AttemptResult, push: Push) -> AttemptResult:
        return result

    def result(self, delivered: Delivered, push: Push) -> dict[str, Any] | list[Any] | None:
        """The webhook's own JSON reply, an object or an array: the receiving system chose what
        to answer, so that is what it tells the sender; any other reply (none, text, a bare
        JSON value) says nothing."""
        answer = json_answer(delivered.response)
        return answer if isinstance(answer, dict | list) else None
