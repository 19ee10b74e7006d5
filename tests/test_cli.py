"""The command line as a user runs it: real subprocesses."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import aiohttp

from connector.local import running_connector
from connector.settings import load_settings
from tests.databases import with_database
from tests.processes import run_to_end, serving


async def test_demo_succeeds() -> None:
    code, out, err = await run_to_end("demo", "--size-mib", "2")
    assert code == 0, out + err
    assert "checksums match" in out
    assert "delivered" in out


async def test_keys_create_then_use(tmp_path: Path, backbone: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[platform]\nurl = "{backbone}"\n')
    code, out, err = await run_to_end(
        "keys", "create", "--config", str(config), "--name", "erp", "--scope", "messages:read"
    )
    assert code == 0, err
    key = out.strip()
    assert key.startswith("ck_") and "shown only now" in err
    # on the PostgreSQL pass, the database `keys create` wrote to (the data dir's own)
    overrides = with_database(tmp_path / "data", {"server": {"host": "127.0.0.1", "port": 0}})
    settings = load_settings(config, **overrides)
    async with (
        running_connector(settings, key) as node,
        aiohttp.ClientSession(headers={"X-API-KEY": key}) as http,
    ):
        assert node.runtime.bootstrap_key is None  # a key exists, so none is generated
        async with http.get(node.url + "/api/v1/messages") as response:
            assert response.status == 200
        async with http.get(node.url + "/api/v1/files") as response:
            assert response.status == 403  # scope messages:read only
    # the key itself is nowhere in the data dir, only its hash
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes()


async def test_bad_scope_and_bad_config_are_clear(tmp_path: Path) -> None:
    code, _, err = await run_to_end("keys", "create", "--name", "x", "--scope", "everything")
    assert code == 2 and "invalid choice" in err
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nprot = 1\n")
    code, _, err = await run_to_end("serve", "--config", str(config))
    assert code == 2 and "server.prot: unknown key" in err and "Traceback" not in err


async def test_serve_prints_url_and_key_then_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n[server]\nport = 0\n')
    async with serving("--config", str(config)) as served:
        url = re.search(r"listening on (http://\S+)", served.banner)
        key = re.search(r"API key:\s+(\S+)", served.banner)
        assert url and key, served.banner
        async with aiohttp.ClientSession() as http:
            async with http.get(url.group(1) + "/health") as response:
                assert response.status == 200
            async with http.get(
                url.group(1) + "/api/v1/account/identity", headers={"X-API-KEY": key.group(1)}
            ) as response:
                assert response.status == 200
                assert (await response.json())["address"].startswith("id1")
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.process.wait(), 30) == 0
