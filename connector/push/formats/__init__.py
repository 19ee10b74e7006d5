"""Push formats by name: ``standard`` webhooks and the BPM engines' message APIs."""

from __future__ import annotations

from connector.push.formats.base import EngineOptions, Format, Push, PushRequest
from connector.push.formats.camunda7 import Camunda7
from connector.push.formats.camunda8 import Camunda8
from connector.push.formats.spiff import Spiff
from connector.push.formats.standard import Standard

__all__ = ["FORMATS", "EngineOptions", "Format", "Push", "PushRequest"]

FORMATS: dict[str, Format] = {
    "standard": Standard(),
    "camunda7": Camunda7(),
    "camunda8": Camunda8(),
    "spiff": Spiff(),
}
"""Every format this version delivers."""
