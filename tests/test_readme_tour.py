"""The README's tour, typed as written: its shell blocks, read from README.md itself, run in bash
against a real ``connector serve`` started the way the quickstart starts it.

The only changes to what a user types: the port (the test takes a free one), and
``.venv/bin/connector`` is this environment's ``connector``. The API key is pasted from the
banner into ``export KEY=``, as the README tells the user to.

The walk-through of two companies (``## Request and reply between companies``) starts its own
platform and connectors, so it runs on its own, in a terminal of its own, with free ports in
place of the ones it names.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connector.cli import _parser
from tests.processes import REPO, clean_env, free_port, serving

README = REPO / "README.md"
TOUR = "A five-minute tour"
WEBHOOKS = "Webhooks: pushed to you, signed, at least once"
"""Its shell blocks run after the tour's, in the same terminal."""
RECEIVER_PORT = "9000"
README_URL = "http://127.0.0.1:8080"
REQUEST_REPLY = "Request and reply between companies"
"""Its shell blocks start a platform and two connectors, and run in a terminal of their own."""
REQUEST_REPLY_PORTS = ("8090", "8081", "8082", "9001")
"""The platform's, Acme's, Globex's and the order desk's ports, as the README names them."""
KEY_PLACEHOLDER = "export KEY=ck_..."
CONNECTOR = ".venv/bin/connector"
DONE = "==> tour block {} exited 0"


def sections(markdown: str) -> dict[str, str]:
    """The README's ``## `` sections by heading."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.M)
    return {heading.strip(): body for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def shell_blocks(section: str) -> list[str]:
    """Every fenced ``sh``/``bash``/``shell`` block of a section, in order."""
    return re.findall(r"^```(?:sh|bash|shell)\n(.*?)^```$", section, flags=re.M | re.S)


def section_blocks(*headings: str) -> list[str]:
    """The shell blocks of these README sections, in order."""
    found = sections(README.read_text(encoding="utf-8"))
    blocks = []
    for heading in headings:
        section = found.get(heading)
        assert section is not None, f"README.md has no section '## {heading}'"
        assert shell_blocks(section), f"README.md's '{heading}' has no shell blocks"
        blocks += shell_blocks(section)
    return blocks


def tour_blocks() -> list[str]:
    return section_blocks(TOUR, WEBHOOKS)


def connector_executable() -> str:
    """``connector`` of the environment running the tests (what ``.venv/bin/connector`` is)."""
    found = shutil.which("connector", path=str(Path(sys.executable).parent))
    assert found, f"no connector executable next to {sys.executable}"
    return found


def as_typed(blocks: list[str], url: str, key: str, receiver_port: int = 9000) -> str:
    """One bash script: the blocks in order, as a user types them into one terminal.

    ``set -euo pipefail`` makes any failing command (curl -f on an error status included) end
    it; after each block a line says it finished.
    """
    text = "\n".join(blocks)
    assert text.count(f"export URL={README_URL}") == 1, "the tour no longer exports URL"
    assert text.count(KEY_PLACEHOLDER) == 1, "the tour no longer has `export KEY=ck_...`"
    script = ["set -euo pipefail"]
    for number, block in enumerate(blocks, 1):
        block = block.replace(f"export URL={README_URL}", f"export URL={url}")
        block = block.replace(KEY_PLACEHOLDER, f"export KEY={key}")
        block = block.replace(CONNECTOR, connector_executable())
        block = block.replace(f"127.0.0.1:{RECEIVER_PORT}/", f"127.0.0.1:{receiver_port}/")
        block = block.replace(f"receiver.py {RECEIVER_PORT}", f"receiver.py {receiver_port}")
        script += [block, f"printf '\\n%s\\n' '{DONE.format(number)}'"]
    return "\n".join(script) + "\n"


async def run_bash(
    script: Path, cwd: Path, within: float = 240, **env: str
) -> tuple[int, str, str]:
    """``bash script`` in ``cwd`` (with ``env`` added to a clean environment); whatever of its
    process group outlives it, or ``within``, is killed."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(script),
        cwd=cwd,
        env=clean_env(**env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    finally:
        with suppress(ProcessLookupError):  # the group outlives bash when it left jobs behind
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def per_block(out: str, count: int) -> list[str]:
    """The output of each block that finished (split at the lines the script adds)."""
    outputs = []
    for number in range(1, count + 1):
        marker = f"\n{DONE.format(number)}\n"
        if marker not in out:
            break
        before, out = out.split(marker, 1)
        outputs.append(before)
    return outputs


def json_objects(text: str) -> list[Any]:
    """Every JSON object printed in ``text`` (curl prints them one after another, unseparated)."""
    decoder = json.JSONDecoder()
    found, at = [], 0
    while (start := text.find("{", at)) != -1:
        try:
            value, at = decoder.raw_decode(text, start)
        except ValueError:
            at = start + 1
            continue
        found.append(value)
    return found


def test_every_tour_command_can_be_typed_as_written() -> None:
    blocks = tour_blocks() + section_blocks(REQUEST_REPLY)
    text = "\n".join(blocks)
    for step in ("/api/v1/files", "/api/v1/messages", "/download", "connector demo", "wait=60"):
        assert step in text, f"the tour no longer shows {step}"
    commands = [
        line
        for line in text.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#") and KEY_PLACEHOLDER not in line
    ]
    for line in commands:
        # placeholders (FIL..., ck_…) cannot be typed; `open` exists on macOS only
        assert "..." not in line and "…" not in line, f"a placeholder in: {line}"
        assert not re.match(r"\s*(open|xdg-open|start) ", line), f"not on every system: {line}"
        # an error status must not pass silently
        for curl in re.findall(r"\bcurl\b[^|)]*", line):
            assert re.search(r"\s(-[a-zA-Z]*f[a-zA-Z]*|--fail)(\s|$)", curl), f"no -f: {line}"


def test_the_commands_in_running_it_for_real_parse(capsys: pytest.CaptureFixture[str]) -> None:
    """Each ``connector ...`` of the README's prose is a command line the CLI accepts."""
    prose = sections(README.read_text(encoding="utf-8"))["Running it for real"]
    spans = [" ".join(s.split()) for s in re.findall(r"`(connector [^`]+)`", prose)]
    typed = [s for s in spans if not re.search(r"\bN\b|\.\.\.", s)]  # `--flag N ...`: a pattern
    assert len(typed) >= 4, spans
    for span in typed:
        try:
            _parser().parse_args(shlex.split(span)[1:])
        except SystemExit as exc:  # --help and --version exit 0 after printing
            assert exc.code == 0, f"README: `{span}`: {capsys.readouterr().err}"


async def test_the_readme_tour_works_as_typed(tmp_path: Path) -> None:
    blocks = tour_blocks()
    work = tmp_path / "work"  # the user's terminal, in a fresh folder
    work.mkdir()
    # As `make run` does, with the data dir and port moved through the documented overrides
    # (port 0: the system picks a free one; the banner says which).
    env = clean_env(CONNECTOR_DATA_DIR=str(tmp_path / "data"), CONNECTOR_SERVER__PORT="0")
    async with serving(env=env, cwd=tmp_path) as served:
        url = re.search(r"Connector listening on (http://\S+)", served.banner)
        key = re.search(r"API key:\s+(ck_\S+)", served.banner)
        assert url and key, served.banner
        script = tmp_path / "tour.sh"
        script.write_text(as_typed(blocks, url.group(1), key.group(1), free_port()))

        code, out, err = await run_bash(script, work)
        outputs = per_block(out, len(blocks))
        if code != 0 or len(outputs) != len(blocks):
            failed = len(outputs)
            pytest.fail(
                f"tour block {failed + 1} exited {code}:\n{blocks[failed]}\n"
                f"--- its output:\n{out.rsplit(DONE.format(failed), 1)[-1]}\n"
                f"--- stderr:\n{err}\n--- the connector's log:\n{served.output()}"
            )

        # What the user sees in the first block: the message arrived, the bytes came back.
        printed = json_objects(outputs[0])
        identity = printed[0]
        assert identity["address"].startswith("id1")
        sent = next(o for o in printed if o.get("name") == "order.paid")
        assert sent["status"] == "sent" and sent["direction"] == "outgoing"
        incoming = [
            item
            for o in printed
            for item in o.get("items", [])
            if item.get("direction") == "incoming" and item.get("correlationKey") == "order-4711"
        ]
        assert incoming, outputs[0]
        assert incoming[-1]["content"] == {"order": 4711}
        assert incoming[-1]["attachments"][0]["filename"] == "hello.txt"
        assert re.search(r'(?im)^content-disposition:.*filename="hello\.txt"', outputs[0])
        assert any(o.get("status") == "healthy" for o in printed), outputs[0]
        files = {p.relative_to(work).as_posix(): p.read_bytes() for p in work.rglob("*.*")}
        assert files["hello.txt"] == b"hello world\n"
        copies = [name for name, data in files.items() if data == files["hello.txt"]]
        assert len(copies) == 2, f"curl's download is not a copy of hello.txt: {files}"

        # The event feed, the idempotent async send, the demo, the client commands.
        everything = "\n".join(outputs)
        events = [e for o in json_objects(everything) for e in o.get("items", []) if "type" in e]
        assert {"message.sent", "message.received"} <= {e["type"] for e in events}
        assert any(o.get("status") == "queued" for o in json_objects(everything))
        assert "Demo succeeded" in everything
        # The webhook block: the stdlib receiver verified the push and printed it; a replay.
        pushed = re.search(r"message\.received MSG\w+ \{'order': 4712\}$", everything, re.M)
        assert pushed, f"the receiver printed no push; the webhook block said:\n{outputs[-1]}"
        replayed = [o for o in json_objects(everything) if "events" in o and len(o) == 1]
        assert replayed and replayed[0]["events"] >= 1, everything
        from_cli = [name for name in files if name.startswith("downloads/")]
        assert from_cli, f"the client commands downloaded nothing: {list(files)}"
        for name in from_cli:  # each the very bytes uploaded under that name
            assert files[name] == files[name.removeprefix("downloads/")], name

        # Every message the tour sent to itself arrives (the last ones moments after the tour).
        address = identity["address"]
        async with aiohttp.ClientSession(headers={"X-API-KEY": key.group(1)}) as http:
            for _ in range(600):
                async with http.get(
                    url.group(1) + "/api/v1/messages", params={"limit": "1000"}
                ) as response:
                    assert response.status == 200
                    items = (await response.json())["items"]
                outgoing = [m for m in items if m["direction"] == "outgoing"]
                received = [m for m in items if m["direction"] == "incoming"]
                if len(received) == len(outgoing):
                    break
                await asyncio.sleep(0.1)
            assert len(received) == len(outgoing) >= 3, items
            assert all(m["sender"] == address for m in received)
        assert "Traceback" not in served.output(), served.output()


def walkthrough_as_typed(blocks: list[str], ports: dict[str, int]) -> str:
    """The request/reply walk-through as one bash script, its ports replaced by free ones.

    Added around what the user types: ``set -euo pipefail``, a line after each block, and a
    trap that reports (and stops) whatever background job is still running when the script
    ends, so a walk-through that does not clean up after itself fails the test.
    """
    text = "\n".join(blocks)
    for port in ports:
        assert re.search(rf"\b{port}\b", text), f"the walk-through no longer uses port {port}"
    assert CONNECTOR in text, "the walk-through no longer runs .venv/bin/connector"
    script = [
        "set -euo pipefail",
        'trap \'left=$(jobs -pr); if [ -n "$left" ]; then echo "LEFT RUNNING: $left" >&2;'
        " kill $left; fi' EXIT",
    ]
    for number, block in enumerate(blocks, 1):
        for port, free in ports.items():
            block = re.sub(rf"\b{port}\b", str(free), block)
        block = block.replace(CONNECTOR, connector_executable())
        script += [block, f"printf '\\n%s\\n' '{DONE.format(number)}'"]
    return "\n".join(script) + "\n"


def distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


async def test_request_and_reply_between_two_companies_works_as_typed(tmp_path: Path) -> None:
    blocks = section_blocks(REQUEST_REPLY)
    section = sections(README.read_text(encoding="utf-8"))[REQUEST_REPLY]
    work = tmp_path / "work"  # the user's terminal, in a fresh folder
    work.mkdir()
    temporary = tmp_path / "tmp"  # where `mktemp -d` makes the walk-through's data folder
    temporary.mkdir()
    ports = dict(
        zip(REQUEST_REPLY_PORTS, distinct_free_ports(len(REQUEST_REPLY_PORTS)), strict=True)
    )
    script = tmp_path / "request-reply.sh"
    script.write_text(walkthrough_as_typed(blocks, ports))

    code, out, err = await run_bash(script, work, within=180, TMPDIR=str(temporary))
    logs = {p.name: p.read_text(errors="replace") for p in temporary.rglob("*.log")}
    outputs = per_block(out, len(blocks))
    if code != 0 or len(outputs) != len(blocks):
        failed = len(outputs)
        pytest.fail(
            f"walk-through block {failed + 1} exited {code}:\n{blocks[failed]}\n"
            f"--- its output:\n{out.rsplit(DONE.format(failed), 1)[-1]}\n--- stderr:\n{err}\n"
            + "".join(f"--- {name}:\n{text}\n" for name, text in sorted(logs.items()))
        )
    assert "LEFT RUNNING" not in err, f"the walk-through left processes running:\n{err}"
    assert {"platform.log", "acme.log", "globex.log"} <= set(logs), list(logs)
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}:\n{text}"

    # Both connectors came up healthy.
    healths = [o for o in json_objects(outputs[0]) if "checks" in o]
    assert [h["status"] for h in healths] == ["healthy", "healthy"], outputs[0]

    # Request and reply: Globex's wait got Acme's request; Acme's wait got Globex's offer.
    printed = json_objects(outputs[1])
    asked = next(o for o in printed if o.get("name") == "quote.requested")
    offered = next(o for o in printed if o.get("name") == "quote.offered" and "items" not in o)
    assert asked["status"] == "sent" and offered["status"] == "sent", printed
    globex = asked["recipients"][0]["address"]
    assert offered["sender"] == globex and offered["recipients"][0]["address"] == asked["sender"]
    request = json.loads((work / "request.json").read_text())["items"]
    assert [m["id"] for m in request] == [asked["id"]], request
    [offer] = json.loads((work / "offer.json").read_text())["items"]
    assert offer["id"] == offered["id"] and offer["direction"] == "incoming"
    assert offer["sender"] == globex and offer["correlationKey"] == "rfq-1001"
    assert offer["content"] == {"item": "anvil", "price": 97.5}
    assert f'"content": {json.dumps(offer["content"])}' in section, "README shows another offer"

    # Correlate mode: the answer carries Globex's receipt, with what the order desk replied.
    [ordered] = [o for o in json_objects(outputs[2]) if o.get("name") == "order.placed"]
    assert ordered["mode"] == "correlate" and ordered["direction"] == "outgoing", ordered
    correlation = ordered["correlation"]
    assert correlation["status"] == "correlated", ordered
    assert correlation["result"] == {"orderNumber": "SO-rfq-1001", "delivery": "2 weeks"}
    assert correlation["correlatedAt"] and correlation["reason"] is None
    assert correlation["rejectedAt"] is None
    shown = f'"result": {json.dumps(correlation["result"])}'
    assert shown in section, f"README shows another result than {shown}"


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces as ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_the_readmes_links_lead_somewhere() -> None:
    """Every relative link of README.md names a file of the repo and, with ``#``, a heading."""
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert relative, "README.md links to nothing of its own"
    for link in relative:
        path, _, fragment = link.partition("#")
        target = REPO / path if path else README
        assert target.exists(), f"README.md links to {link}: no such file"
        if fragment:
            prose = re.sub(
                r"^```.*?^```$", "", target.read_text(encoding="utf-8"), flags=re.M | re.S
            )
            headings = re.findall(r"^#+ (.+)$", prose, flags=re.M)
            anchors = {github_anchor(h) for h in headings}
            assert fragment in anchors, f"README.md links to {link}: no such heading"
