"""First steps as a user takes them: real subprocesses, always terminated."""

from __future__ import annotations

import argparse
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from connector.cli import _parser
from tests.conftest import Api
from tests.processes import run_to_end, serving


def _config(path: Path, data_dir: Path, port: int = 0) -> Path:
    path.write_text(f'data_dir = "{data_dir}"\n[server]\nport = {port}\n')
    return path


async def test_second_serve_on_the_data_dir_or_port_says_so_in_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with serving("--config", str(_config(tmp_path / "a.toml", data_dir))) as first:
        pid = first.process.pid
        assert "API key:   ck_" in first.banner
        port = re.search(r"listening on http://\S+:(\d+)", first.banner)
        assert port, first.banner

        second = _config(tmp_path / "b.toml", data_dir)
        code, out, err = await run_to_end("serve", "--config", str(second))
        assert code == 1, out + err
        assert err.strip().splitlines() == [
            f"connector: another connector is running with data dir {data_dir} (pid {pid})"
        ]
        assert "listening" not in out and "backbone" not in out + err

        other = _config(tmp_path / "c.toml", tmp_path / "other", int(port.group(1)))
        code, out, err = await run_to_end("serve", "--config", str(other))
        assert code == 1, out + err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"port {port.group(1)} on 127.0.0.1 is in use" in lines[0], err
        assert "listening" not in out
    assert first.process.returncode == 0

    # Later starts do not print the bootstrap key again: they say how to make a key.
    async with serving("--config", str(_config(tmp_path / "a.toml", data_dir))) as again:
        assert "ck_" not in again.banner
        assert "connector keys create" in again.banner


async def test_version_on_the_command_line_and_in_health(alice: Api) -> None:
    installed = version("connector")
    code, out, err = await run_to_end("--version")
    assert (code, out.strip()) == (0, f"connector {installed}"), err
    async with alice.http.get(alice.url + "/health") as response:
        assert response.status == 200
        assert (await response.json())["version"] == installed


def test_every_option_has_help_naming_its_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "ck_must-never-show-in-help-0123456789"
    monkeypatch.setenv("CONNECTOR_API_KEY", secret)
    parser = _parser()
    commands = _subcommands(parser)
    client = ("files upload", "files download", "messages send", "messages list")
    assert {"serve", "backbone", "demo", "keys create", *client} <= set(commands)
    for name, command in {"": parser, **commands}.items():
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):  # each subcommand's own help
                for choice in action._choices_actions:
                    assert choice.help, f"connector {name} {choice.dest}: no help"
            else:
                assert action.help, f"connector {name} {action.dest}: no help"
        assert secret not in command.format_help(), name
    top = parser.format_help()
    for variable in (
        "CONNECTOR_CONFIG",
        "CONNECTOR_URL",
        "CONNECTOR_API_KEY",
        "CONNECTOR_LOG_LEVEL",
        "CONNECTOR_MASTER_KEY",
    ):
        assert variable in top, variable
    for name in ("serve", "keys create"):
        text = commands[name].format_help()
        for variable in ("CONNECTOR_CONFIG", "CONNECTOR_LOG_LEVEL", "CONNECTOR_MASTER_KEY"):
            assert variable in text, (name, variable)
    for name in client:
        options = {action.dest: action.help or "" for action in commands[name]._actions}
        assert "$CONNECTOR_URL" in options["url"], name
        assert "$CONNECTOR_API_KEY" in options["api_key"], name


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[prefix + name] = sub
                found.update(_subcommands(sub, prefix + name + " "))
    return found
