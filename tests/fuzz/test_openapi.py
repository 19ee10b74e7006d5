"""Schemathesis over our own OpenAPI document, as an outside fuzzer would run it.

A real ``connector serve`` (SQLite, embedded platform) and the real ``schemathesis`` command:
every route; every check (schemathesis.toml turns each on, as ``--checks all`` would, and lists
the few exceptions an operation needs, each with its reason); a fixed seed; all phases (coverage,
fuzzing, stateful through the document's links). Zero failures means the document says exactly
what the API does: no 5xx, no status, content type, header or body the document does not list,
nothing valid refused and nothing invalid taken. A second, smaller run sends no key, and every
keyed route must answer 401.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import string
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.processes import clean_env, serving, stop

SEED = int(os.environ.get("FUZZ_SEED", "20261205"))
"""Fixed, so a CI run is reproducible; ``FUZZ_SEED=n make test`` explores other cases."""
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFIG = Path(__file__).with_name("schemathesis.toml")

pytestmark = pytest.mark.timeout(600)


def _banner_value(banner: str, label: str) -> str:
    line = next(line for line in banner.splitlines() if line.strip().startswith(label))
    return line.split(label, 1)[1].split()[0]


async def _schemathesis(*args: str, cwd: Path, within: float = 480) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
        env=clean_env(NO_COLOR="1", SCHEMATHESIS_TELEMETRY="false"),
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), within)
    finally:
        await stop(process, within=5)
    return process.returncode or 0, out.decode(errors="replace")


def _serve(tmp_path: Path) -> Any:
    return serving(
        env=clean_env(
            CONNECTOR_DATA_DIR=str(tmp_path / "data"),
            CONNECTOR_SERVER__PORT="0",
            CONNECTOR_LOG_LEVEL="INFO",
        ),
        cwd=tmp_path,
    )


async def test_every_route_with_all_checks(tmp_path: Path) -> None:
    async with _serve(tmp_path) as served:
        url = _banner_value(served.banner, "Connector listening on")
        key = _banner_value(served.banner, "API key:")
        address = _banner_value(served.banner, "address:")
        async with aiohttp.ClientSession(headers={"X-API-KEY": key}) as http:
            form = aiohttp.FormData()
            form.add_field("file", b"fuzz", filename="fuzz.txt")
            async with http.post(f"{url}/api/v1/files", data=form) as response:
                assert response.status == 201, await response.text()
                file_id = (await response.json())["id"]
        config = tmp_path / "schemathesis.toml"
        config.write_text(
            string.Template(CONFIG.read_text()).substitute(FUZZ_ADDRESS=address, FUZZ_FILE=file_id)
        )
        status, report = await _schemathesis(
            "--config-file",
            str(config),
            "run",
            f"{url}/api/v1/openapi.json",
            "--header",
            f"X-API-KEY: {key}",
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--generation-database",
            "none",
            cwd=tmp_path,
        )
        log = served.output()
    assert status == 0, report[-20000:]
    assert "failures" not in report.rsplit("Test cases:", 1)[-1], report[-5000:]
    # what a user would see go wrong beside the answers: a traceback in the log
    assert "Traceback" not in log, log[-20000:]
    # the run sent real messages and followed them to the routes behind them, not only to 404s
    assert "POST /api/v1/messages 201" in log
    assert re.search(r"GET /api/v1/messages/MSG\w{17} 200", log)
    assert re.search(r"POST /api/v1/messages/MSG\w{17}/read 200", log)


async def test_every_keyed_route_refuses_a_request_without_a_key(tmp_path: Path) -> None:
    async with _serve(tmp_path) as served:
        url = _banner_value(served.banner, "Connector listening on")
        key = _banner_value(served.banner, "API key:")
        async with aiohttp.ClientSession(headers={"X-API-KEY": key}) as http:
            async with http.get(f"{url}/api/v1/openapi.json") as response:
                document = await response.json()
        (tmp_path / "openapi.json").write_text(json.dumps(document))
        har = tmp_path / "requests.har"
        status, report = await _schemathesis(
            "run",
            str(tmp_path / "openapi.json"),
            "--url",
            url,
            "--checks",
            "not_a_server_error",
            "--seed",
            str(SEED),
            "--max-examples",
            "5",
            "--phases",
            "examples,coverage,fuzzing",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--report",
            "har",
            "--report-har-path",
            str(har),
            cwd=tmp_path,
        )
    assert status == 0, report[-20000:]
    keyed = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    }
    assert keyed, "the document marks no route as needing a key"
    answered: dict[tuple[str, str], set[int]] = {}
    for entry in json.loads(har.read_text())["log"]["entries"]:
        request_path = entry["request"]["url"].removeprefix(url).split("?")[0]
        route = _route_of(entry["request"]["method"], request_path, document)
        if route in keyed:
            answered.setdefault(route, set()).add(entry["response"]["status"])
    assert set(answered) == keyed, keyed - set(answered)
    assert {route: codes for route, codes in answered.items() if codes != {401}} == {}


def _route_of(method: str, path: str, document: dict[str, Any]) -> tuple[str, str] | None:
    """The document's (method, path template) that ``path`` is an instance of."""
    for template in document["paths"]:
        pattern = "^" + _template_regex(template) + "$"
        if method.lower() in document["paths"][template] and re.match(pattern, path):
            return method.upper(), template
    return None


def _template_regex(template: str) -> str:
    return re.sub(r"\\{\w+\\}", "[^/]+", re.escape(template))
