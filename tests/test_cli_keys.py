"""``connector keys create|list|revoke`` as an operator runs them, against real connectors."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from sqlalchemy import update

from connector.local import running_connector
from connector.services.api_keys import hash_key
from connector.settings import load_settings
from storage.engine import create_engine
from storage.models import ApiKey
from tests.databases import database_for
from tests.processes import clean_env, run_to_end, serving

REVOCATION_BOUND = 2.0
"""Seconds within which a running connector refuses a key revoked by another process."""


def _config(tmp_path: Path, extra: str = "") -> Path:
    """A config file; on the PostgreSQL pass it names the data dir's own database, so that the
    CLI, a served connector and this test's own reads all use that one."""
    config = tmp_path / "c.toml"
    text = f'data_dir = "{tmp_path / "data"}"\n[server]\nport = 0\n{extra}'
    if url := database_for(tmp_path / "data"):
        text += f'\n[database]\nurl = "{url}"\n'
    config.write_text(text)
    return config


async def _keys(config: Path, *args: str) -> tuple[int, str, str]:
    return await run_to_end("keys", *args, "--config", str(config), env=clean_env())


async def _create(config: Path, name: str, *args: str) -> str:
    code, out, err = await _keys(config, "create", "--name", name, *args)
    assert code == 0, err
    return out.strip()


async def _listed(config: Path) -> list[dict[str, object]]:
    code, out, err = await _keys(config, "list", "--json")
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


async def test_list_shows_every_key_without_the_key_or_its_hash(tmp_path: Path) -> None:
    config = _config(tmp_path)
    erp = await _create(config, "erp", "--scope", "messages:read", "--scope", "files:read")
    code, _, err = await _keys(
        config, "create", "--name", "temp", "--scope", "*", "--expires-at", "2099-01-31T12:00:00Z"
    )
    assert code == 0 and "valid until 2099-01-31T12:00:00Z" in err
    await _create(config, "hourly", "--scope", "webhooks:admin", "--expires-in", "3600")

    code, table, err = await _keys(config, "list")
    assert code == 0, err
    lines = table.splitlines()
    assert lines[0].split() == ["ID", "NAME", "SCOPES", "SOURCE", "CREATED", "EXPIRES", "REVOKED"]
    assert re.search(r"\berp\s+messages:read,files:read\s+cli\s+\S+Z\s+never\s+-$", lines[1])
    assert "2099-01-31T12:00:00Z" in lines[2]
    assert "ck_" not in table

    listed = await _listed(config)
    assert [k["name"] for k in listed] == ["erp", "temp", "hourly"]
    assert listed[0]["scopes"] == ["messages:read", "files:read"]
    assert listed[0]["source"] == "cli" and listed[0]["revokedAt"] is None
    assert listed[1]["expiresAt"] == "2099-01-31T12:00:00Z"
    hourly = datetime.fromisoformat(str(listed[2]["expiresAt"]))
    assert timedelta(minutes=50) < hourly - datetime.now(UTC) <= timedelta(hours=1)
    assert set(listed[0]) == {
        "id", "name", "scopes", "source", "createdAt", "expiresAt", "revokedAt"
    }  # fmt: skip
    everything = table + json.dumps(listed)
    assert erp not in everything and hash_key(erp) not in everything


async def test_bad_expiries_are_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    for option, value in (
        ("--expires-in", "0"),
        ("--expires-in", "soon"),
        ("--expires-at", "2099-01-31T12:00:00"),  # no offset
    ):
        code, _, err = await _keys(config, "create", "--name", "x", "--scope", "*", option, value)
        assert code == 2 and option in err and "Traceback" not in err, err
    code, _, err = await _keys(
        config, "create", "--name", "x", "--scope", "*", "--expires-at", "2001-01-01T00:00:00Z"
    )
    assert code == 2 and "in the past" in err
    code, _, err = await _keys(
        config, "create", "--name", "x", "--scope", "*",
        "--expires-in", "60", "--expires-at", "2099-01-01T00:00:00Z",
    )  # fmt: skip
    assert code == 2 and "not allowed with" in err
    assert await _listed(config) == []


async def test_revoke_by_name_or_id_and_the_errors(tmp_path: Path) -> None:
    config = _config(
        tmp_path, '[api]\nkeys = [{name = "erp-config", key = "a-long-configured-secret"}]\n'
    )
    await _create(config, "ops", "--scope", "*")
    await _create(config, "twin", "--scope", "*")
    await _create(config, "twin", "--scope", "files:read")

    code, out, err = await _keys(config, "revoke", "ops")
    assert code == 0 and "Revoked API key 'ops'" in out, err
    code, out, _ = await _keys(config, "revoke", "ops")
    assert code == 0 and "revoked already" in out

    code, _, err = await _keys(config, "revoke", "twin")
    assert code == 1 and "2 API keys are named 'twin'" in err and "by its id" in err
    twin = next(k for k in await _listed(config) if k["scopes"] == ["files:read"])
    code, out, _ = await _keys(config, "revoke", str(twin["id"]))
    assert code == 0 and "'twin'" in out and f"id {twin['id']}" in out

    code, _, err = await _keys(config, "revoke", "nobody")
    assert code == 1 and "no API key named or numbered 'nobody'" in err

    code, _, err = await _keys(config, "revoke", "erp-config")
    assert code == 1 and "config file (api.keys)" in err and "remove it from the config" in err

    revoked = {k["name"]: k["revokedAt"] for k in await _listed(config) if k["revokedAt"]}
    assert set(revoked) == {"ops", "twin"}
    code, table, _ = await _keys(config, "list")
    assert re.search(r"\bops\b.*\d{2}Z\s*$", table.splitlines()[1])


async def test_list_says_which_config_keys_a_start_would_add_or_remove(tmp_path: Path) -> None:
    keys_line = 'keys = [{name = "%s", key = "a-long-configured-secret-%s"}]'
    config = _config(tmp_path, "[api]\n" + keys_line % ("erp-config", "1") + "\n")
    await _create(config, "ops", "--scope", "*")
    code, table, err = await _keys(config, "list")
    assert code == 0 and "erp-config" not in table  # not stored: no row, no id
    assert "config key 'erp-config' (api.keys) is not stored yet" in err

    async with serving("--config", str(config), env=clean_env()):
        pass  # a start stores the config file's keys
    code, table, err = await _keys(config, "list")
    assert re.search(r"\berp-config\s+\*\s+config\b", table) and "note:" not in err

    config.write_text(config.read_text().replace("erp-config", "erp-2").replace('-1"', '-2"'))
    code, table, err = await _keys(config, "list")
    assert "erp-config" in table  # still stored, until the next start
    assert "config key 'erp-config' is no longer in the config file" in err
    assert "config key 'erp-2' (api.keys) is not stored yet" in err
    assert "a-long-configured-secret" not in table + err


async def test_a_revoked_key_is_refused_by_a_running_server_within_2_s(tmp_path: Path) -> None:
    config = _config(tmp_path)
    key = await _create(config, "erp", "--scope", "*")
    async with (
        serving("--config", str(config), env=clean_env()) as served,
        aiohttp.ClientSession(headers={"X-API-KEY": key}) as http,
    ):
        found = re.search(r"listening on (http://\S+)", served.banner)
        assert found, served.banner
        identity = found.group(1) + "/api/v1/account/identity"
        for _ in range(3):  # in use, so the server has it verified (and cached, if it caches)
            async with http.get(identity) as response:
                assert response.status == 200
        code, _, err = await _keys(config, "revoke", "erp")
        assert code == 0, err
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REVOCATION_BOUND
        while True:
            async with http.get(identity) as response:
                status, problem = response.status, await response.json()
            if status == 401 or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert status == 401, f"still {status} {REVOCATION_BOUND} s after the revocation"
        assert problem["code"] == "unauthorized"
        assert "'erp' was revoked" in problem["detail"]


async def test_an_expired_key_is_refused_with_a_clear_detail(tmp_path: Path, backbone: str) -> None:
    config = _config(tmp_path, f'[platform]\nurl = "{backbone}"\n')
    key = await _create(config, "short", "--scope", "*", "--expires-in", "3600")
    settings = load_settings(config)
    # an hour passes: the stored expiry is now behind us
    engine = create_engine(settings.database_url)
    try:
        async with engine.begin() as connection:
            past = datetime.now(UTC) - timedelta(minutes=1)
            await connection.execute(update(ApiKey).values(expires_at=past))
    finally:
        await engine.dispose()
    async with (
        running_connector(settings, key) as node,
        aiohttp.ClientSession(headers={"X-API-KEY": key}) as http,
        http.get(node.url + "/api/v1/messages") as response,
    ):
        assert response.status == 401
        problem = await response.json()
        assert problem["code"] == "unauthorized"
        assert "'short' expired at" in problem["detail"]
