"""Hostile API input is answered with a problem, never a 500, and never stored unreadably.

Written the way a fuzzer or an attacker sends it: raw bytes where a friendly client would have
escaped or refused them, so the server sees exactly what a hostile one can send.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import pytest
import yarl
from sqlalchemy import update

from storage.models import File
from tests.conftest import Api

PROBLEM = "application/problem+json"
BOUNDARY = "xBOUNDARYx"


async def _post_json(api: Api, raw: bytes) -> tuple[int, dict[str, Any]]:
    async with api.request(
        "POST", "/api/v1/messages", data=raw, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.content_type == PROBLEM, await response.text()
        return response.status, await response.json(content_type=None)


async def _feeds_readable(api: Api) -> None:
    for path in ("/api/v1/messages", "/api/v1/events"):
        status, body = await api.json("GET", path, params={"limit": "1000"})
        assert status == 200, body


def _send(bob: Api, **fields: str) -> bytes:
    """A send body with raw JSON text spliced in, so escapes reach the server as written."""
    parts = [f'"recipients": ["{bob.address}"]', '"content": {"ok": 1}']
    for name, raw in fields.items():
        if name == "content":
            parts[1] = f'"content": {raw}'
        else:
            parts.append(f'"{name}": {raw}')
    return ("{" + ", ".join(parts) + "}").encode()


@pytest.mark.parametrize(
    ("field", "raw", "named"),
    [
        ("content", r'{"text": "\ud800"}', "content"),
        ("content", r'{"\udfff": 1}', "content"),
        ("content", r'{"deep": [{"x": ["a\ud800b"]}]}', "content"),
        ("name", r'"order.\ud800"', "name"),
        ("correlationKey", r'"\udc00"', "correlationKey"),
        ("tags", r'["ok", "\ud83d"]', "tags.1"),
    ],
)
async def test_lone_surrogate_is_refused_and_never_stored(
    alice: Api, bob: Api, field: str, raw: str, named: str
) -> None:
    status, body = await _post_json(alice, _send(bob, **{field: raw}))
    assert (status, body["code"]) == (422, "validation_failed"), body
    assert named in [e["field"] for e in body["errors"]], body
    await _feeds_readable(alice)
    _, page = await alice.json("GET", "/api/v1/messages")
    assert page["items"] == []


async def test_deeply_nested_json_is_refused(alice: Api, bob: Api) -> None:
    status, body = await _post_json(alice, b"[" * 100_000 + b"]" * 100_000)
    assert (status, body["code"]) == (400, "validation_failed"), body
    deep = "[" * 1000 + "]" * 1000
    status, body = await _post_json(alice, _send(bob, content=f'{{"a": {deep}}}'))
    assert status in (400, 422) and body["code"] == "validation_failed", body
    # deeper than a peer accepts (connector.services.body.MAX_CONTENT_DEPTH): refused here
    nested = "[" * 70 + "]" * 70
    status, body = await _post_json(alice, _send(bob, content=f'{{"a": {nested}}}'))
    assert (status, body["code"]) == (422, "validation_failed"), body
    assert "content" in [e["field"] for e in body["errors"]]
    await _feeds_readable(alice)


def _multipart(part_headers: bytes, payload: bytes = b"hello") -> bytes:
    return (
        b"--" + BOUNDARY.encode() + b"\r\n" + part_headers + b"\r\n\r\n" + payload + b"\r\n"
        b"--" + BOUNDARY.encode() + b"--\r\n"
    )


async def _upload_raw(api: Api, part_headers: bytes) -> tuple[int, dict[str, Any]]:
    async with api.request(
        "POST",
        "/api/v1/files",
        data=_multipart(part_headers),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    ) as response:
        return response.status, await response.json(content_type=None)


@pytest.mark.parametrize(
    "headers",
    [
        b'Content-Disposition: form-data; name="file"; filename="a\x01b.txt"',
        b'Content-Disposition: form-data; name="file"; filename="a\x00b.txt"',
        b'Content-Disposition: form-data; name="file"; filename="\xed\xa0\x80.txt"',
        b'Content-Disposition: form-data; name="file"; filename="caf\xe9.txt"',
        b'Content-Disposition: form-data; name="file"; filename="a.txt"\r\nX-Junk: \x7f',
        b'Content-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        b"Content-Type: text/plain\x1b[31m",
        b'Content-Disposition: form-data; name="fi\xffle"',
    ],
)
async def test_multipart_part_headers_with_bad_bytes(alice: Api, headers: bytes) -> None:
    status, body = await _upload_raw(alice, headers)
    assert (status, body["code"]) == (400, "validation_failed"), body
    _, page = await alice.json("GET", "/api/v1/files")
    assert page["items"] == []


@pytest.mark.parametrize(
    ("disposition", "stored"),
    [
        ('filename="../../etc/passwd"', "passwd"),
        ('filename="C:\\\\x\\\\y"', "y"),
        ('filename="/abs/path/report.pdf"', "report.pdf"),
        ("filename*=UTF-8''..%2F..%2Fetc%2Fpasswd", "passwd"),
        ("filename*=UTF-8''a%00b%0Ac%0D.txt", "abc.txt"),
        ("filename*=UTF-8''r%C3%A9sum%C3%A9.pdf", "résumé.pdf"),
        ('filename="r%C3%A9sum%C3%A9.pdf"', "résumé.pdf"),
        ('filename=".."', "file"),
        ('filename="dir/"', "file"),
        ("filename*=UTF-8''%0A%00", "file"),
    ],
)
async def test_upload_filename_is_a_safe_base_name(
    alice: Api, disposition: str, stored: str
) -> None:
    status, body = await _upload_raw(
        alice, f'Content-Disposition: form-data; name="file"; {disposition}'.encode()
    )
    assert status == 201, body
    assert body["filename"] == stored
    async with alice.request("GET", f"/api/v1/files/{body['id']}/download") as response:
        assert response.status == 200
        disposition_out = response.headers["Content-Disposition"]
        assert await response.read() == b"hello"
    assert "/" not in disposition_out.replace("UTF-8''", "")
    assert "\\" not in disposition_out
    assert response.content_disposition is not None
    assert response.content_disposition.filename == stored


async def _raw_get(api: Api, path: str, key: bytes) -> tuple[int, dict[str, Any]]:
    url = urlsplit(api.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"X-API-KEY: " + key + b"\r\n\r\n"
        )
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize(
    "key",
    ["ключ-0123456789abcdef".encode(), "clé-0123456789abcdef".encode("latin-1"), b"\xff\xfe"],
)
async def test_non_ascii_api_key_is_unauthorized(alice: Api, key: bytes) -> None:
    status, body = await _raw_get(alice, "/api/v1/messages", key)
    assert (status, body["code"]) == (401, "unauthorized"), body


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("name", ["createdAfter", "createdBefore"])
async def test_naive_times_in_message_filters(alice: Api, name: str) -> None:
    status, body = await alice.json("GET", "/api/v1/messages", params={name: "2024-01-01T00:00:00"})
    assert (status, body["code"]) == (400, "validation_failed"), body
    assert name in [e["field"] for e in body["errors"]]
    status, body = await alice.json(
        "GET", "/api/v1/messages", params={name: "2024-01-01T00:00:00Z"}
    )
    assert status == 200, body


@pytest.mark.parametrize(
    ("path", "cursor"),
    [
        ("/api/v1/files", _cursor('f["2024-01-01T00:00:00", "FIL00000000000000000"]')),
        ("/api/v1/files", _cursor('f["0001-01-01T00:00:00+14:00", "FIL00000000000000000"]')),
        ("/api/v1/files", _cursor('f["2024-01-01T00:00:00+00:00", "FIL\\ud800"]')),
        ("/api/v1/messages", _cursor("s2024-01-01T00:00:00")),
    ],
)
async def test_crafted_cursors(alice: Api, path: str, cursor: str) -> None:
    await alice.upload("a.txt", b"a")
    status, body = await alice.json("GET", path, params={"cursor": cursor})
    assert (status, body["code"]) == (400, "validation_failed"), body
    assert body["errors"][0]["field"] == "cursor"


async def test_stored_mimetype_with_control_characters(alice: Api) -> None:
    file = await alice.upload("a.txt", b"data")
    async with alice.runtime.sessions.begin() as session:
        await session.execute(
            update(File)
            .where(File.id == file["id"])
            .values(mimetype="text/html\r\nSet-Cookie: x=1")
        )
    async with alice.request("GET", f"/api/v1/files/{file['id']}/download") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert "Set-Cookie" not in response.headers
        assert await response.read() == b"data"


@pytest.mark.parametrize(
    ("field", "value"), [("title", "a\x00b"), ("description", "\x00"), ("tags", "ok,a\nb")]
)
async def test_upload_text_fields_a_peer_would_refuse(alice: Api, field: str, value: str) -> None:
    form = (
        f'Content-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n--{BOUNDARY}\r\n'
        'Content-Disposition: form-data; name="file"; filename="a.txt"'
    ).encode()
    status, body = await _upload_raw(alice, form)
    assert (status, body["code"]) == (422, "validation_failed"), body
    _, page = await alice.json("GET", "/api/v1/files")
    assert page["items"] == []


async def test_openapi_documents_the_input_problems(alice: Api) -> None:
    _, document = await alice.json("GET", "/api/v1/openapi.json")
    paths = document["paths"]
    assert {"400", "422"} <= paths["/api/v1/files"]["post"]["responses"].keys()
    assert "400" in paths["/api/v1/files"]["get"]["responses"]
    assert "400" in paths["/api/v1/messages"]["get"]["responses"]
    assert {"400", "422"} <= paths["/api/v1/messages"]["post"]["responses"].keys()


@pytest.mark.parametrize(
    "disposition",
    [
        # parameters aiohttp's parser cannot read: it warns (BadContentDispositionParam) and
        # drops them, so the file would silently lose its name
        b"form-data; name=\"file\"; filename*=UTF-8''%ff%fe.txt",
        b"form-data; name=\"file\"; filename*=no-such-charset''%41.txt",
        b'form-data; name="file"; filename*=a.txt',
        b'form-data; name="file"; filename="a.txt"; filename*=UTF-8\'\'%C3%28.txt',
        # a header it cannot read at all (BadContentDispositionHeader)
        b'form-data; name="file"; filename=a b.txt',
        b'form-data; name="file"; filename="a.txt";',
        b'form-data; name="file"; name="other"',
        b'form data; name="file"',
    ],
)
async def test_upload_with_an_unreadable_content_disposition(
    alice: Api, disposition: bytes, caplog: pytest.LogCaptureFixture, recwarn: Any
) -> None:
    with caplog.at_level(logging.DEBUG):
        status, body = await _upload_raw(alice, b"Content-Disposition: " + disposition)
    assert (status, body["code"]) == (400, "validation_failed"), body
    assert "Content-Disposition" in body["detail"], body
    assert [e["field"] for e in body["errors"]] == ["part 1: Content-Disposition"], body
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert not recwarn.list, [str(w.message) for w in recwarn.list]
    _, page = await alice.json("GET", "/api/v1/files")
    assert page["items"] == []


async def test_upload_with_a_charset_part(alice: Api) -> None:
    # RFC 7578's _charset_ part: aiohttp reads it inside its reader, and raised RuntimeError
    # (a 500) on a long one; to us it is an unknown part, whatever its length
    for charset in ("x" * 40, "utf-8"):
        form = (
            f'Content-Disposition: form-data; name="_charset_"\r\n\r\n{charset}\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"'
        ).encode()
        status, body = await _upload_raw(alice, form)
        assert (status, body["code"]) == (422, "validation_failed"), body
        assert "_charset_" in body["detail"]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("name=a%00b", "name"),
        ("correlationKey=line%0Abreak", "correlationKey"),
        ("peer=not-an-address", "peer"),
        ("name=", "name"),
    ],
)
async def test_message_filters_that_no_message_can_match_are_refused(
    alice: Api, query: str, named: str
) -> None:
    """Filters take what a message can carry (one-line text, an address), and say so."""
    async with alice.http.get(
        f"{alice.url}/api/v1/messages?{query}", headers=alice.headers
    ) as response:
        status, body = response.status, await response.json(content_type=None)
    assert (status, body["code"]) == (400, "validation_failed"), body
    assert named in [e["field"] for e in body["errors"]], body


@pytest.mark.parametrize("query", ["name=order.%ED%A0%80", "correlationKey=%ED%BF%BF%FF"])
async def test_filters_with_bytes_that_are_not_utf8_match_nothing(alice: Api, query: str) -> None:
    """Surrogate-style or stray bytes arrive as U+FFFD (aiohttp decodes the query with
    replacement), which no stored message carries: an empty page, never a 500."""
    url = yarl.URL(f"{alice.url}/api/v1/messages?{query}", encoded=True)
    async with alice.http.get(url, headers=alice.headers) as response:
        status, body = response.status, await response.json(content_type=None)
    assert (status, body["items"]) == (200, []), body
