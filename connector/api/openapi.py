"""The OpenAPI 3.1 document, generated from the route declarations and their pydantic models."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from connector.api.routing import PUBLIC, RouteSpec, RouteTable
from connector.schemas import Problem

routes = RouteTable("docs")

_REF = "#/components/schemas/{model}"


def build_document(specs: list[RouteSpec], version: str) -> dict[str, Any]:
    models: set[type[BaseModel]] = {Problem}
    for spec in specs:
        models.update(m for m in (spec.body, spec.response) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    keyed, definitions = models_json_schema(
        [(m, "serialization") for m in ordered], by_alias=True, ref_template=_REF
    )
    refs = {model: schema for (model, _), schema in keyed.items()}
    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec, refs)
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
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-KEY"}},
        },
    }


def _operation(spec: RouteSpec, refs: dict[Any, Any]) -> dict[str, Any]:
    problem = {"application/problem+json": {"schema": refs[Problem]}}
    operation: dict[str, Any] = {
        "summary": spec.summary,
        "operationId": spec.handler.__name__,
        "tags": [spec.tag],
        "parameters": [
            *(
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in re.findall(r"{(\w+)}", spec.path)
            ),
            *(
                {
                    "name": name,
                    "in": "header",
                    "required": False,
                    "description": description,
                    "schema": {"type": "string"},
                }
                for name, description in spec.headers.items()
            ),
        ],
        "responses": {},
    }
    if spec.scope != PUBLIC:
        operation["security"] = [{"apiKey": []}]
        operation["x-scope"] = spec.scope
    if spec.query is not None:
        schema = spec.query.model_json_schema(by_alias=True)
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            operation["parameters"].append(
                {"name": name, "in": "query", "required": name in required, "schema": prop}
            )
    if spec.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[spec.body]}},
        }
    elif spec.content_type == "multipart/form-data":
        operation["requestBody"] = {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "contentMediaType": "application/octet-stream",
                            },
                            "title": {"type": "string"},
                            "description": {"type": "string"},
                            "expiresAt": {"type": "string", "format": "date-time"},
                            "tags": {"type": "string", "description": "comma-separated or JSON"},
                        },
                    }
                }
            },
        }
    ok: dict[str, Any] = {"description": "success"}
    if spec.response is not None:
        ok["content"] = {"application/json": {"schema": refs[spec.response]}}
    elif spec.content_type and spec.content_type != "multipart/form-data":
        ok["content"] = {spec.content_type: {"schema": {"type": "string", "format": "binary"}}}
    operation["responses"][str(spec.status)] = ok
    for status, description in spec.responses.items():
        entry: dict[str, Any] = {"description": description}
        if status >= 400:
            entry["content"] = problem
        elif spec.response is not None:
            entry["content"] = ok.get("content")
        operation["responses"][str(status)] = entry
    if spec.scope != PUBLIC:
        operation["responses"].setdefault(
            "401", {"description": "missing or unknown API key", "content": problem}
        )
        operation["responses"].setdefault(
            "403", {"description": "the key lacks the scope", "content": problem}
        )
    return operation


DOCUMENT: web.AppKey[dict[str, Any]] = web.AppKey("openapi_document")


@routes.get(
    "/api/v1/openapi.json",
    scope="messages:read",
    summary="This document",
    content_type="application/json",
)
async def openapi_json(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[DOCUMENT])

