"""OpenAPI document, Swagger UI and metrics, as a user sees them."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from openapi_spec_validator import validate
from swagger_ui_bundle import swagger_ui_path

from connector.api.app import route_specs
from tests.conftest import Api


async def test_openapi_is_valid_and_complete(alice: Api) -> None:
    status, document = await alice.json("GET", "/api/v1/openapi.json")
    assert status == 200
    validate(document)  # raises on an invalid OpenAPI 3.1 document
    refs = set(re.findall(r'"\$ref": "([^"]+)"', json.dumps(document)))
    schemas = document["components"]["schemas"]
    assert {r for r in refs if r.removeprefix("#/components/schemas/") not in schemas} == set()
    assert document["openapi"] == "3.1.0"
    paths = document["paths"]
    for route in route_specs():
        assert route.method.lower() in paths[route.path], route.path
    send = paths["/api/v1/messages"]["post"]
    assert send["security"] == [{"apiKey": []}, {"bearer": []}]
    assert send["x-scope"] == "messages:write"
    schema = send["requestBody"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("SendMessageRequest")
    request_schema = document["components"]["schemas"]["SendMessageRequest"]
    assert "correlationKey" in request_schema["properties"]
    assert "security" not in paths["/health"]["get"]
    headers = {p["name"] for p in send["parameters"] if p["in"] == "header"}
    assert headers == {"Idempotency-Key", "Prefer"}
    assert {p["name"] for p in paths["/api/v1/messages"]["get"]["parameters"]} >= {
        "direction",
        "correlationKey",
        "createdAfter",
        "cursor",
        "limit",
    }


async def test_openapi_needs_a_key_and_docs_page_does_not(alice: Api) -> None:
    async with alice.http.get(alice.url + "/api/v1/openapi.json") as response:
        assert response.status == 401
    async with alice.http.get(alice.url + "/api/docs") as response:
        assert response.status == 200
        assert "swagger-ui" in await response.text()


async def test_metrics(alice: Api, bob: Api) -> None:
    status, _ = await alice.send(recipients=[bob.address], content={"m": 1})
    assert status == 201
    async with alice.http.get(alice.url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert 'connector_messages{direction="outgoing",status="sent"} 1' in text or (
        'connector_messages{direction="outgoing",status="delivered"} 1' in text
    )
    assert "connector_outbox_pending 0" in text


async def test_docs_page_loads_nothing_from_elsewhere(alice: Api) -> None:
    async with alice.http.get(alice.url + "/api/docs") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        html = await response.text()
        policy = response.headers["Content-Security-Policy"]
    assert not re.search(r"(https?:)?//", html), html  # no absolute or scheme-relative URL
    assert "<script>" not in html  # no inline script: the policy forbids it
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert set(referenced) == {
        "/api/docs/swagger-ui.css",
        "/api/docs/favicon-32x32.png",
        "/api/docs/favicon-16x16.png",
        "/api/docs/swagger-ui-bundle.js",
        "/api/docs/connector-docs.js",
    }
    bundle = Path(str(swagger_ui_path))
    types = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}
    for path in referenced:
        async with alice.http.get(alice.url + path) as response:  # no key: the page is public
            assert response.status == 200, path
            assert response.content_type == types[Path(path).suffix], path
            assert response.headers["Cache-Control"] == "public, max-age=86400"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            body = await response.read()
        name = path.rsplit("/", 1)[1]
        if (bundle / name).exists():
            assert body == (bundle / name).read_bytes(), path
        else:  # our own script: asks for the key once and sends it as X-API-KEY
            script = body.decode()
            assert "/api/v1/openapi.json" in script and '"X-API-KEY"' in script
            assert "prompt(" in script and "validatorUrl: null" in script


async def _raw_get(api: Api, path: str) -> tuple[int, str, bytes]:
    """GET ``path`` exactly as written (a client library would normalise dot segments)."""
    url = urlsplit(api.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    content_type = re.search(rb"(?im)^content-type: *([^;\r]+)", head)
    assert content_type is not None, head
    return int(head.split(b" ", 2)[1]), content_type.group(1).decode(), body


@pytest.mark.parametrize(
    "path",
    [
        "/api/docs/index.html",  # in the package, but not one of the page's files
        "/api/docs/swagger-ui-bundle.js.map",
        "/api/docs/nope.js",
        "/api/docs/..%2F..%2Fsettings.py",
        "/api/docs/%2e%2e%2f%2e%2e%2fconnector%2fsettings.py",
        "/api/docs/..%5c..%5csettings.py",
        "/api/docs/../../etc/passwd",
        "/api/docs/%2e%2e/%2e%2e/etc/passwd",
        "/api/docs/swagger-ui.css/..%2f..%2f..%2fvendor",
    ],
)
async def test_docs_serves_only_its_own_files(alice: Api, path: str) -> None:
    status, content_type, body = await _raw_get(alice, path)
    assert status == 404, (path, body)
    assert content_type == "application/problem+json"
    assert json.loads(body)["code"] == "not_found"


async def test_problem_answers_carry_codes_the_document_lists(alice: Api, bob: Api) -> None:
    _, document = await alice.json("GET", "/api/v1/openapi.json")
    listed = set(document["components"]["schemas"]["Problem"]["properties"]["code"]["enum"])
    unknown = "id1" + "a" * 32
    answers = [
        await alice.json("GET", "/api/v1/messages", params={"limit": "0"}),
        await alice.json("GET", "/api/v1/messages/MSG00000000000000000"),
        await alice.send(recipients=[unknown], content={}),
        await alice.send(recipients=[bob.address], content={}, attachments=["FIL" + "0" * 17]),
        await alice.json("POST", "/api/v1/messages", data=b"{}"),
        await alice.json("GET", "/api/v1/messages", headers={"X-API-KEY": "x" * 20}),
        await alice.json("PUT", "/api/v1/messages"),
    ]
    codes = {body["code"] for _, body in answers}
    assert codes == {
        "validation_failed",
        "not_found",
        "recipient_not_found",
        "file_not_found",
        "unsupported_media_type",
        "unauthorized",
        "method_not_allowed",
    }
    assert codes <= listed
