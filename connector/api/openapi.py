"""The OpenAPI 3.1 document, generated from the route declarations and their pydantic models."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from connector.api.access_log import REQUEST_ID_HEADER, REQUEST_ID_PATTERN
from connector.api.problems import problem_codes
from connector.api.routing import ANY_KEY, PUBLIC, RouteSpec, RouteTable
from connector.schemas import Problem

routes = RouteTable("docs")

_REF = "#/components/schemas/{model}"
_REQUEST_ID = {
    "description": "The request's id, as its access-log line and every log line of its "
    "handling carry it: the request's own X-Request-Id when that is 1 to 64 letters, digits "
    "and ._:-, else one made by the connector. On every answer of the API (not on the bare 400 "
    "the HTTP server itself gives a request it cannot parse, before the API sees it).",
    "required": False,
    "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
}


def build_document(specs: list[RouteSpec], version: str) -> dict[str, Any]:
    models: set[type[BaseModel]] = {Problem}
    for spec in specs:
        models.update(m for m in (spec.body, spec.response) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    keyed, definitions = models_json_schema(
        [(m, "serialization") for m in ordered], by_alias=True, ref_template=_REF
    )
    refs = {model: schema for (model, _), schema in keyed.items()}
    # the catalogue of problem codes, so a client can switch on them with the document's word
    definitions["$defs"]["Problem"]["properties"]["code"]["enum"] = problem_codes()
    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(
            spec, refs, definitions.setdefault("$defs", {})
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Connector API",
            "version": version,
            "description": "End-to-end encrypted messages and files between organisations.",
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-KEY"},
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the same API key as Authorization: Bearer <key>",
                },
            },
        },
    }


def _operation(spec: RouteSpec, refs: dict[Any, Any], components: dict[str, Any]) -> dict[str, Any]:
    """One operation; the shapes its parameters refer to (enums) are added to ``components``."""
    operation: dict[str, Any] = {
        "summary": spec.summary,
        "operationId": spec.handler.__name__,
        "tags": [spec.tag],
        "parameters": [
            *(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": _string(spec.path_patterns.get(name)),
                }
                for name in re.findall(r"{(\w+)}", spec.path)
            ),
            *(
                {
                    "name": name,
                    "in": "header",
                    "required": False,
                    "description": header.description,
                    "schema": header.schema,
                }
                for name, header in spec.headers.items()
            ),
        ],
        "responses": {},
    }
    if spec.scope != PUBLIC:
        operation["security"] = [{"apiKey": []}, {"bearer": []}]
        operation["x-scope"] = spec.scope
    if spec.query is not None:
        schema = spec.query.model_json_schema(by_alias=True, ref_template=_REF)
        components.update(schema.pop("$defs", {}))
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            operation["parameters"].append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in required,
                    **({"description": prop["description"]} if "description" in prop else {}),
                    "schema": _without_null(prop),
                }
            )
    if spec.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[spec.body]}},
        }
    elif spec.form is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": _form_schema(spec.form)}},
        }
    ok: dict[str, Any] = {"description": "success"}
    if spec.response is not None:
        ok["content"] = {"application/json": {"schema": refs[spec.response]}}
    elif spec.content_type == "application/json":  # a document of its own (this one)
        ok["content"] = {"application/json": {"schema": {"type": "object"}}}
    elif spec.content_type and spec.content_type.startswith("text/"):
        ok["content"] = {spec.content_type: {"schema": {"type": "string"}}}
    elif spec.content_type and spec.content_type != "multipart/form-data":
        ok["content"] = {spec.content_type: {"schema": {"type": "string", "format": "binary"}}}
    if spec.links:
        ok["links"] = {
            name: {"operationId": operation_id, "parameters": parameters}
            for name, (operation_id, parameters) in spec.links.items()
        }
    operation["responses"][str(spec.status)] = ok
    for status, description in _answers(spec).items():
        entry: dict[str, Any] = {"description": description}
        if status >= 400:
            entry["content"] = {"application/problem+json": {"schema": refs[Problem]}}
        elif "content" in ok:  # another success of the same kind (202, 206)
            entry["content"] = ok["content"]
        operation["responses"][str(status)] = entry
    for response in operation["responses"].values():
        response["headers"] = {REQUEST_ID_HEADER: dict(_REQUEST_ID)}
    return operation


def _answers(spec: RouteSpec) -> dict[int, str]:
    """The route's own answers, and those every route of its kind can give."""
    answers = dict(spec.responses)
    if spec.query is not None or spec.body is not None or spec.headers:
        answers.setdefault(400, "validation_failed: a parameter or header is not valid")
    if spec.body is not None:
        answers.setdefault(400, "validation_failed: the body is not JSON")
        answers.setdefault(413, "payload_too_large: the body is larger than 2 MiB")
        answers.setdefault(415, "unsupported_media_type: the body is not application/json")
        answers.setdefault(422, "validation_failed: the body does not fit the schema")
    if spec.scope != PUBLIC:
        answers.setdefault(401, "unauthorized: missing or unknown API key")
    if spec.scope not in (PUBLIC, ANY_KEY):
        answers.setdefault(403, "forbidden: the key lacks the scope")
    return dict(sorted(answers.items()))


def _string(pattern: str | None) -> dict[str, Any]:
    return {"type": "string", "pattern": pattern} if pattern else {"type": "string"}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without pydantic's ``null`` branch: a query or form value is text,
    never null, and absence is what "optional" already says."""
    options = schema.get("anyOf")
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "title", "default")}
    if options:
        kept = [o for o in options if o.get("type") != "null"]
        if len(kept) == 1:
            return {**rest, **kept[0]}
        return {**rest, "anyOf": kept}
    return rest


def _form_schema(form: type[BaseModel]) -> dict[str, Any]:
    """The multipart body: the part ``file`` and the form's text parts, nothing else."""
    schema = form.model_json_schema(by_alias=True)
    properties = {
        "file": {
            "type": "string",
            "format": "binary",
            "contentMediaType": "application/octet-stream",
        },
        **{name: _without_null(prop) for name, prop in schema["properties"].items()},
    }
    return {
        "type": "object",
        "required": ["file"],
        "properties": properties,
        "additionalProperties": False,
    }


DOCUMENT: web.AppKey[dict[str, Any]] = web.AppKey("openapi_document")


@routes.get(
    "/api/v1/openapi.json",
    scope="messages:read",
    summary="This document",
    content_type="application/json",
)
async def openapi_json(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[DOCUMENT])
