"""``connector demo``: a backbone and two connectors on loopback, one file sent end to end.

Every step goes through the public REST API, as a business system would use it.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from connector.client_cli import upload_file
from connector.local import local_settings, running_connector

T = TypeVar("T")
_WAIT = 30.0


def _step(text: str) -> None:
    print(f"  • {text}", flush=True)


def _done(text: str, started: float) -> None:
    print(f"    ✓ {text} ({(time.perf_counter() - started) * 1000:.0f} ms)", flush=True)


async def _until(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline:
        value = await probe()
        if value is not None:
            return value
        await asyncio.sleep(0.05)
    raise TimeoutError(f"gave up waiting for {what} after {_WAIT:.0f} s")


async def run_demo(size_mib: float = 5.0) -> int:
    from backbone.server import start_embedded

    print("Connector demo: backbone + connectors A and B on 127.0.0.1", flush=True)
    with tempfile.TemporaryDirectory(prefix="connector-demo-") as tmp:
        root = Path(tmp)
        runner, backbone_url = await start_embedded(root / "backbone")
        try:
            _step(f"backbone running at {backbone_url}")
            key_a, key_b = (f"demo-{secrets.token_urlsafe(16)}" for _ in range(2))
            settings_a = local_settings(root / "a", backbone_url, key_a)
            settings_b = local_settings(root / "b", backbone_url, key_b)
            async with (
                running_connector(settings_a, key_a) as a,
                running_connector(settings_b, key_b) as b,
            ):
                _step(f"connector A at {a.url}, address {a.address}")
                _step(f"connector B at {b.url}, address {b.address}")
                return await _exchange(root, a.url, key_a, b.url, key_b, b.address, size_mib)
        except Exception as exc:
            print(f"  ✗ demo failed: {type(exc).__name__}: {exc}", flush=True)
            return 1
        finally:
            await runner.cleanup()


async def _exchange(
    root: Path, url_a: str, key_a: str, url_b: str, key_b: str, address_b: str, size_mib: float
) -> int:
    source = root / "Prüfbericht №1 ✓.bin"
    data = secrets.token_bytes(int(size_mib * (1 << 20)))
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    async with (
        aiohttp.ClientSession(headers={"X-API-KEY": key_a}) as client_a,
        aiohttp.ClientSession(headers={"X-API-KEY": key_b}) as client_b,
    ):
        started = time.perf_counter()
        _step(f"A uploads {source.name} ({len(data):,} bytes, SHA-256 {digest[:16]}…)")
        file = await upload_file(client_a, url_a, source, progress=False)
        _done(f"encrypted and stored at the platform as {file['id']}", started)

        started = time.perf_counter()
        _step("A sends a message with it to B (name order.paid, correlationKey demo-4711)")
        body = {
            "recipients": [address_b],
            "content": {"text": "Here is the test report"},
            "attachments": [file["id"]],
            "name": "order.paid",
            "correlationKey": "demo-4711",
        }
        async with client_a.post(f"{url_a}/api/v1/messages", json=body) as response:
            sent = await response.json()
            if response.status not in (201, 202):
                raise RuntimeError(f"send failed: {response.status} {sent}")
        _done(f"{sent['id']} {sent['status']}", started)

        started = time.perf_counter()
        _step("B's scheduler pulls it from the platform (long-poll)")

        async def arrived() -> dict[str, Any] | None:
            params = {"direction": "incoming", "correlationKey": "demo-4711"}
            async with client_b.get(f"{url_b}/api/v1/messages", params=params) as r:
                items: list[dict[str, Any]] = (await r.json())["items"]
            return items[0] if items else None

        received = await _until(arrived, "the message at B")
        _done(f"verified, decrypted, stored: content {received['content']}", started)

        started = time.perf_counter()
        attachment = received["attachments"][0]
        _step(f"B downloads the attachment {attachment['filename']}")
        path = f"/api/v1/messages/{received['id']}/attachments/{attachment['id']}/download"
        hasher = hashlib.sha256()
        async with client_b.get(url_b + path) as response:
            if response.status != 200:
                raise RuntimeError(f"download failed: {response.status} {await response.text()}")
            async for chunk in response.content.iter_chunked(1 << 20):
                hasher.update(chunk)
        match = hasher.hexdigest() == digest
        _done(f"SHA-256 {'matches' if match else 'DIFFERS'}: {hasher.hexdigest()[:16]}…", started)

        started = time.perf_counter()
        _step("A learns that B received it (delivery receipt)")

        async def delivered() -> dict[str, Any] | None:
            async with client_a.get(f"{url_a}/api/v1/messages/{sent['id']}") as r:
                message: dict[str, Any] = await r.json()
            if message["status"] == "delivered":
                return message
            await client_a.post(f"{url_a}/api/v1/account/sync")
            return None

        final = await _until(delivered, "the delivery receipt at A")
        _done(f"status {final['status']} at {final['recipients'][0]['deliveredAt']}", started)
    print("Demo " + ("succeeded: checksums match." if match else "FAILED: checksum mismatch."))
    return 0 if match else 1
