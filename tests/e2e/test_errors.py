"""Bad input gets a clear problem JSON with a stable code, and stores nothing."""

from __future__ import annotations

import io
from typing import Any

import aiohttp

from tests.conftest import Api, ConnectorFactory

PROBLEM = "application/problem+json"


async def _problem(api: Api, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with api.request(method, path, **kw) as response:
        assert response.content_type == PROBLEM, await response.text()
        body = await response.json(content_type=None)
    assert {"type", "title", "status", "detail", "code"} <= body.keys()
    assert body["status"] == response.status
    return response.status, body


async def _message_count(api: Api) -> int:
    _, body = await api.json("GET", "/api/v1/messages", params={"limit": "1000"})
    return len(body["items"])


async def _file_count(api: Api) -> int:
    _, body = await api.json("GET", "/api/v1/files", params={"limit": "1000"})
    return len(body["items"])


async def test_auth_missing_unknown_and_scope(connector_factory: ConnectorFactory) -> None:
    reader_key = "reader-key-0123456789"
    api = await connector_factory(
        "scoped",
        api={
            "keys": [
                {"name": "reader", "key": reader_key, "scopes": ["messages:read"]},
            ]
        },
    )
    async with api.http.get(api.url + "/api/v1/messages") as response:
        assert response.status == 401
        assert (await response.json(content_type=None))["code"] == "unauthorized"
    async with api.http.get(
        api.url + "/api/v1/messages", headers={"X-API-KEY": "wrong-key-000000"}
    ) as response:
        assert response.status == 401
    headers = {"X-API-KEY": reader_key}
    async with api.http.get(api.url + "/api/v1/messages", headers=headers) as response:
        assert response.status == 200
    async with api.http.post(
        api.url + "/api/v1/messages", headers=headers, json={"recipients": [], "content": {}}
    ) as response:
        assert response.status == 403
        assert (await response.json(content_type=None))["code"] == "forbidden"
    async with api.http.get(api.url + "/api/v1/files", headers=headers) as response:
        assert response.status == 403
    # /health needs no key
    async with api.http.get(api.url + "/health") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "healthy"


async def test_send_validation(alice: Api, bob: Api) -> None:
    status, body = await _problem(
        alice,
        "POST",
        "/api/v1/messages",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert (status, body["code"]) == (400, "validation_failed")
    status, body = await _problem(alice, "POST", "/api/v1/messages", json={"content": {}})
    assert (status, body["code"]) == (422, "validation_failed")
    assert "recipients" in body["detail"]
    status, body = await _problem(
        alice, "POST", "/api/v1/messages", json={"recipients": [bob.address], "content": "text"}
    )
    assert status == 422 and "content" in body["detail"]
    status, body = await _problem(
        alice,
        "POST",
        "/api/v1/messages",
        json={"recipients": [bob.address], "content": {}, "colour": "red"},
    )
    assert status == 422 and "colour" in body["detail"]
    status, body = await _problem(
        alice, "POST", "/api/v1/messages", json={"recipients": ["nobody"], "content": {}}
    )
    assert status == 422 and "address" in body["detail"]
    status, body = await _problem(alice, "POST", "/api/v1/messages", data=b"x")
    assert (status, body["code"]) == (415, "unsupported_media_type")
    assert await _message_count(alice) == 0


async def test_unknown_recipient_and_attachment(alice: Api, bob: Api) -> None:
    unknown = "id1" + "a" * 32
    status, body = await _problem(
        alice, "POST", "/api/v1/messages", json={"recipients": [unknown], "content": {}}
    )
    assert (status, body["code"]) == (404, "recipient_not_found")
    assert unknown in body["detail"]
    status, body = await _problem(
        alice,
        "POST",
        "/api/v1/messages",
        json={"recipients": [bob.address], "content": {}, "attachments": ["FIL" + "x" * 17]},
    )
    assert (status, body["code"]) == (422, "file_not_found")
    assert await _message_count(alice) == 0


async def test_unknown_ids_and_bad_queries(alice: Api) -> None:
    status, body = await _problem(alice, "GET", "/api/v1/messages/MSGnope")
    assert (status, body["code"]) == (404, "not_found")
    status, body = await _problem(alice, "GET", "/api/v1/files/FILnope/download")
    assert (status, body["code"]) == (404, "file_not_found")
    status, body = await _problem(alice, "GET", "/api/v1/messages", params={"limit": "5000"})
    assert (status, body["code"]) == (400, "validation_failed") and "limit" in body["detail"]
    status, body = await _problem(alice, "GET", "/api/v1/messages", params={"cursor": "%%%"})
    assert status == 400
    status, body = await _problem(alice, "GET", "/api/v1/messages", params={"unread": "maybe"})
    assert status == 400
    status, body = await _problem(alice, "GET", "/api/v1/nothing-here")
    assert (status, body["code"]) == (404, "not_found")
    status, body = await _problem(alice, "PUT", "/api/v1/messages")
    assert status == 405


async def test_upload_errors(connector_factory: ConnectorFactory) -> None:
    api = await connector_factory("small", files={"max_size": 100_000})
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(b"x" * 100_001), filename="big.bin")
    status, body = await _problem(api, "POST", "/api/v1/files", data=form)
    assert (status, body["code"]) == (413, "file_too_large")

    # a streamed body without Content-Length is cut off at the limit as well
    async def chunks() -> Any:
        for _ in range(30):
            yield b"y" * 10_000

    form = aiohttp.FormData()
    form.add_field("file", chunks(), filename="stream.bin")
    status, body = await _problem(api, "POST", "/api/v1/files", data=form)
    assert (status, body["code"]) == (413, "file_too_large")

    status, body = await _problem(api, "POST", "/api/v1/files", json={"file": "x"})
    assert (status, body["code"]) == (415, "unsupported_media_type")
    form = aiohttp.FormData()
    form.add_field("title", "no file here")
    form.add_field("other", io.BytesIO(b"1"), filename="x")
    status, body = await _problem(api, "POST", "/api/v1/files", data=form)
    assert status == 422
    truncated = (
        b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="t.bin"\r\n\r\n'
        b"partial data without a closing boundary"
    )
    status, body = await _problem(
        api,
        "POST",
        "/api/v1/files",
        data=truncated,
        headers={"Content-Type": "multipart/form-data; boundary=XYZ"},
    )
    assert status == 400
    assert await _file_count(api) == 0
    # and the platform holds no leftover blob from the refused uploads
    blobs = api.runtime.settings.data_dir.parent / "backbone" / "blobs"
    leftovers = [p for p in blobs.rglob("FIL*") if p.is_file()] if blobs.exists() else []
    assert leftovers == []
