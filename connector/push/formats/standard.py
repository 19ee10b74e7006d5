"""``standard``: the Standard Webhooks body ``{"id", "type", "timestamp", "data"}``, as is."""

from __future__ import annotations

from connector.clock import isoformat
from connector.push.formats.base import EngineOptions, Push, PushRequest
from connector.push.sender import AttemptResult


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
