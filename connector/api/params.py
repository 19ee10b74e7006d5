"""Reading request input into pydantic models, with problem errors for anything bad."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from connector.errors import UnsupportedMediaType, ValidationFailed

M = TypeVar("M", bound=BaseModel)


def client_gone(request: web.BaseRequest) -> bool:
    """The client hung up (its connection is closed or closing): a long-poll may stop, and a
    request cut short is logged and counted as 499."""
    return request.transport is None or request.transport.is_closing()


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]}
        for e in exc.errors()
    ]


def _summary(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])


async def json_body(request: web.Request, model: type[M]) -> M:
    """The body as ``model``: 415 if not JSON, 400 if malformed, 422 if it does not fit."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"expected Content-Type application/json, got {request.content_type or 'none'}"
        )
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"the body is not valid JSON: {exc}", status=400) from None
    except RecursionError:  # the decoder recurses per level; a hostile depth ends here
        raise ValidationFailed("the body is nested too deeply to be read", status=400) from None
    return _validated(model, data, status=422)


def query(request: web.Request, model: type[M]) -> M:
    """The query string as ``model``; 400 with the offending parameter named."""
    raw: dict[str, Any] = {}
    for name in request.query:
        values = request.query.getall(name)
        raw[name] = values if len(values) > 1 else values[0]
    return _validated(model, raw, status=400)


def form_of(model: type[M], fields: dict[str, Any]) -> M:
    """A form's text parts as ``model``; 422 with the offending part named."""
    return _validated(model, fields, status=422)


def _validated(model: type[M], raw: object, *, status: int) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = _errors(exc)
        raise ValidationFailed(_summary(errors), status=status, errors=errors) from None


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=model.model_dump_json(by_alias=True).encode(),
        content_type="application/json",
    )
