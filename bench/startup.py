"""Start-up benchmark: idle RSS of ``connector serve`` and process spawn -> first 200 on /health.

A backbone runs as its own process; each trial starts ``connector serve`` on a fresh data dir
(with PostgreSQL also a fresh database, created here and dropped at the end) and then again
``--later`` times on the same data dir and database. For each start:

- start -> healthy: ``time.monotonic()`` just before the spawn to the first 200 answer of
  ``GET /health`` (polled every 10 ms; the process's own start, imports, migrations, keys,
  registration at the backbone on a first run);
- idle RSS: ``VmRSS`` of ``/proc/<pid>/status`` after ``--idle`` seconds without a request
  (and ``VmHWM``, the peak of the start-up).

Then the reasons: ``python -X importtime`` of ``import connector.cli`` and of a whole
``connector serve`` start (until healthy) by top-level package (the sum of their modules'
own times), the packages a default SQLite start imports that it does not use, and the RSS each
of the largest adds when imported alone into a bare interpreter.

    python bench/startup.py                # 3 trials x (1 first + 3 later), SQLite and PostgreSQL
    python bench/startup.py --quick        # 1 trial x (1 + 2), 2 s idle
    python bench/startup.py --only sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    HOST,
    BenchError,
    Cluster,
    Proc,
    Row,
    check,
    client_session,
    connector_command,
    connector_toml,
    cpu_times,
    free_port,
    header_line,
    json_number,
    log,
    machine_info,
    percentile,
    print_summary,
    print_table,
    proc_status_kib,
    run_main,
    summary_head,
)

ADMIN_DSN = os.environ.get("CONNECTOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
TARGET_RSS_MIB = 120.0
TARGET_HEALTHY_S = 1.0  # after the first run
KINDS = ("sqlite", "postgresql")
# Imported by a start with the default config (SQLite, no publishers, no webhooks) but not
# needed by it: asked about by name in the report.
NOT_NEEDED_BY_DEFAULT = (
    "pygments",  # alembic -> mako -> mako.ext.pygmentplugin, when pygments is installed
    "mako",  # alembic's templates (revision files), not running migrations
    "swagger_ui_bundle",  # GET /docs only
    "asyncpg",
    "aio_pika",
    "aiormq",
    "pamqp",
    "aiomqtt",
    "paho",
    "redis",
    "nats",
    "SpiffWorkflow",
    "psycopg",
    "psycopg2",
    "uvicorn",
    "fastapi",
    "jinja2",
    "yaml",
)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# --------------------------------------------------------------------------- one start


@dataclass
class Start:
    kind: str
    trial: int
    first: bool
    healthy_s: float
    cpu_s: float  # CPU (user + system) the process used until healthy
    rss_mib: float
    hwm_mib: float


async def wait_healthy(session: aiohttp.ClientSession, proc: Proc, url: str, within: float) -> None:
    deadline = time.monotonic() + within
    last = "no answer"
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                await resp.read()
                if resp.status == 200:
                    return
                last = f"{resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            last = type(exc).__name__
        await asyncio.sleep(0.01)
    raise BenchError(f"{proc.name} not healthy within {within:.0f} s (last: {last})\n{proc.tail()}")


async def timed_start(
    session: aiohttp.ClientSession, proc: Proc, url: str, args: argparse.Namespace, banner: str
) -> tuple[float, float, float, float]:
    """Spawn (appending to the log), wait for /health 200, idle, read RSS, stop.

    Returns (start -> healthy s, CPU s used until healthy, idle VmRSS MiB, VmHWM MiB)."""
    started = proc.restart(banner)
    await wait_healthy(session, proc, url, args.health_timeout)
    healthy = time.monotonic() - started
    user, system = cpu_times(proc.pid)
    await asyncio.sleep(args.idle)
    rss = (proc_status_kib(proc.pid, "VmRSS") or 0) / 1024
    hwm = (proc_status_kib(proc.pid, "VmHWM") or 0) / 1024
    proc.stop()
    return healthy, user + system, rss, hwm


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    import asyncpg

    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"PostgreSQL is not reachable at {ADMIN_DSN}: {exc}") from exc
    name = f"bench_startup_{secrets.token_hex(4)}"
    base = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def write_config(cluster: Cluster, name: str, backbone_url: str, database_url: str) -> Path:
    data_dir = cluster.root / name
    data_dir.mkdir()
    config = cluster.root / f"{name}.toml"
    text = connector_toml(
        data_dir=data_dir,
        port=free_port(),
        platform_url=backbone_url,
        api_key=f"bench-key-{secrets.token_hex(8)}",
        long_poll=True,
        max_size=1 << 20,
    )
    if database_url:
        text += f'[database]\nurl = "{database_url}"\n'
    config.write_text(text)
    return config


def config_port(config: Path) -> int:
    found = re.search(r"^port = (\d+)$", config.read_text(), re.M)
    assert found is not None
    return int(found.group(1))


async def run_trials(
    session: aiohttp.ClientSession, cluster: Cluster, backbone_url: str, args: argparse.Namespace
) -> list[Start]:
    starts: list[Start] = []
    for kind in args.only:
        for trial in range(1, args.trials + 1):
            async with contextlib.AsyncExitStack() as stack:
                database_url = ""
                if kind == "postgresql":
                    database_url = await stack.enter_async_context(fresh_database())
                name = f"{kind}-{trial}"
                config = write_config(cluster, name, backbone_url, database_url)
                argv = [*connector_command(), "serve", "--config", str(config)]
                proc = Proc(f"connector-{name}", argv, cluster.root / f"{name}.log")
                cluster.procs.append(proc)
                url = f"http://{HOST}:{config_port(config)}/health"
                for run in range(args.later + 1):
                    healthy, cpu, rss, hwm = await timed_start(
                        session, proc, url, args, f"{kind} trial {trial} run {run}"
                    )
                    starts.append(Start(kind, trial, run == 0, healthy, cpu, rss, hwm))
                    log(
                        f"{kind} trial {trial} {'first' if run == 0 else 'later'} run: healthy "
                        f"after {healthy:.2f} s ({cpu:.2f} s CPU), idle RSS {rss:.1f} MiB "
                        f"(peak {hwm:.1f}); load {load_average()}"
                    )
    return starts


# --------------------------------------------------------------------------- import time


@dataclass
class ImportProfile:
    total_us: int = 0  # cumulative time of the top-level imports
    by_package: dict[str, int] = field(default_factory=dict)  # sum of self times, us
    modules: int = 0
    names: list[str] = field(default_factory=list)  # in the order their imports ended
    top_modules: list[tuple[str, int, int]] = field(default_factory=list)  # name, self, cumul

    def packages(self) -> set[str]:
        return set(self.by_package)


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$")


def parse_importtime(text: str) -> ImportProfile:
    profile = ImportProfile()
    by_package: dict[str, int] = defaultdict(int)
    modules: list[tuple[str, int, int]] = []
    for line in text.splitlines():
        found = _IMPORT_LINE.match(line)
        if not found:
            continue
        own, cumulative, indent, name = found.groups()
        modules.append((name, int(own), int(cumulative)))
        profile.names.append(name)
        by_package[name.split(".")[0]] += int(own)
        if not indent:
            profile.total_us += int(cumulative)
    profile.by_package = dict(sorted(by_package.items(), key=lambda kv: -kv[1]))
    profile.modules = len(modules)
    profile.top_modules = sorted(modules, key=lambda m: -m[1])[:10]
    return profile


def import_cli(runs: int) -> ImportProfile:
    """``-X importtime -c 'import connector.cli'``, the run with the median total."""
    profiles = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import connector.cli"],
            capture_output=True,
            text=True,
            check=True,
        )
        profiles.append(parse_importtime(out.stderr))
    profiles.sort(key=lambda p: p.total_us)
    return profiles[len(profiles) // 2]


async def import_serve(
    session: aiohttp.ClientSession, cluster: Cluster, backbone_url: str, args: argparse.Namespace
) -> ImportProfile:
    """``-X importtime`` of a whole ``connector serve`` start (SQLite, fresh data dir), until
    healthy, then a second start on the same data dir; the profile of the second."""
    config = write_config(cluster, "importtime", backbone_url, "")
    argv = [*connector_command(), "serve", "--config", str(config)]
    proc = Proc("connector-importtime", argv, cluster.root / "importtime.log")
    proc.env = {"PYTHONPROFILEIMPORTTIME": "1"}
    cluster.procs.append(proc)
    url = f"http://{HOST}:{config_port(config)}/health"
    for run in range(2):
        proc.restart(f"importtime run {run}")
        await wait_healthy(session, proc, url, args.health_timeout)
        proc.stop()
    text = proc.log_path.read_text(errors="replace")
    return parse_importtime(text.rsplit("===== bench: importtime run 1", 1)[1])


_RSS_BY_PACKAGE = """
import importlib, json, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
by_package = {}
before = start = rss()
for name in json.load(sys.stdin):
    try:
        importlib.import_module(name)
    except Exception:
        continue
    now = rss()
    top = name.split('.')[0]
    by_package[top] = by_package.get(top, 0) + now - before
    before = now
print(json.dumps({"total": before - start, "byPackage": by_package}))
"""


def rss_by_package(names: Sequence[str]) -> tuple[float, dict[str, float]]:
    """Import ``names`` in this order into a bare interpreter; the VmRSS each step added,
    summed by top-level package (a package shared by several counts for the first): (MiB in
    all, {package: MiB})."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_BY_PACKAGE],
        input=json.dumps([n for n in names if n not in ("__main__", "runpy")]),
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        found = json.loads(out.stdout)
    except ValueError:
        log(f"RSS by package failed: {out.stderr[-2000:]}")
        return math.nan, {}
    by = {k: v / 1024 for k, v in found["byPackage"].items()}
    return found["total"] / 1024, dict(sorted(by.items(), key=lambda kv: -kv[1]))


def modules_of(names: Sequence[str], package: str) -> list[str]:
    return [n for n in names if n == package or n.startswith(package + ".")]


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3, help="fresh data dirs per kind (3)")
    parser.add_argument("--later", type=int, default=3, help="starts again per data dir (3)")
    parser.add_argument("--idle", type=float, default=5.0, help="idle seconds before RSS (5)")
    parser.add_argument("--only", default="sqlite,postgresql", help="sqlite,postgresql")
    parser.add_argument("--health-timeout", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="1 trial x (1 + 2), 2 s idle")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.later, args.idle = 1, 2, 2.0
    args.only = [k for k in args.only.split(",") if k]
    if not set(args.only) <= set(KINDS) or not args.only:
        parser.error(f"--only: some of {','.join(KINDS)}")
    if args.trials <= 0 or args.later <= 0 or args.idle < 0:
        parser.error("--trials and --later must be positive, --idle not negative")
    return args


def spread(values: Sequence[float], unit: str, digits: int = 2) -> str:
    ordered = sorted(values)
    if not ordered:
        return "-"
    return f"{percentile(ordered, 50):.{digits}f} / {ordered[-1]:.{digits}f} {unit}"


async def main(args: argparse.Namespace) -> int:
    info = machine_info()
    print(header_line(info), flush=True)
    load_before = load_average()
    print(f"# load average (1, 5, 15 min): {load_before}", flush=True)
    with Cluster.create("bench-startup-", keep=args.keep) as cluster:
        async with client_session(limit=4) as session:
            backbone = cluster.start_backbone()
            await backbone.wait_ready(session)
            starts = await run_trials(session, cluster, backbone.url, args)
            log("import times")
            serve_profile = await import_serve(session, cluster, backbone.url, args)
    cli_profile = await asyncio.to_thread(import_cli, 3)
    rss_imports, rss_packages = await asyncio.to_thread(rss_by_package, serve_profile.names)
    not_needed = [p for p in NOT_NEEDED_BY_DEFAULT if p in serve_profile.packages()]
    alone = {
        p: (await asyncio.to_thread(rss_by_package, modules_of(serve_profile.names, p)))[0]
        for p in not_needed
    }
    load_after = load_average()
    noisy = max(os.getloadavg()[0], float(load_before.split(" / ")[0])) > info["cores"]

    rows = [
        Row(
            "load average before / after (1, 5, 15 min)",
            f"{load_before}  |  {load_after}",
            "",
            "NOISY" if noisy else "",
        ),
        Row(
            "trials x starts, idle before RSS",
            f"{args.trials} x (1 + {args.later}), {args.idle:g} s",
        ),
    ]
    met: dict[str, bool] = {}
    summary: dict[str, Any] = {}
    for kind in args.only:
        first = [s for s in starts if s.kind == kind and s.first]
        later = [s for s in starts if s.kind == kind and not s.first]
        rss = [s.rss_mib for s in starts if s.kind == kind]
        later_p50 = percentile(sorted(s.healthy_s for s in later), 50)
        rss_max = max(rss)
        met[f"{kind}Rss"] = rss_max <= TARGET_RSS_MIB
        met[f"{kind}Healthy"] = later_p50 <= TARGET_HEALTHY_S
        rows += [
            Row(
                f"{kind}: start -> healthy, first run p50 / max",
                spread([s.healthy_s for s in first], "s"),
            ),
            Row(
                f"{kind}: start -> healthy, later runs p50 / max",
                spread([s.healthy_s for s in later], "s"),
                f"<= {TARGET_HEALTHY_S:g} s (p50)",
                check(met[f"{kind}Healthy"]),
            ),
            Row(
                f"{kind}: CPU used until healthy, first / later runs p50",
                f"{percentile(sorted(s.cpu_s for s in first), 50):.2f} / "
                f"{percentile(sorted(s.cpu_s for s in later), 50):.2f} s",
            ),
            Row(
                f"{kind}: idle RSS p50 / max (all runs)",
                spread(rss, "MiB", 1),
                f"<= {TARGET_RSS_MIB:g} MiB",
                check(met[f"{kind}Rss"]),
            ),
            Row(
                f"{kind}: start-up peak (VmHWM) p50 / max",
                spread([s.hwm_mib for s in starts if s.kind == kind], "MiB", 1),
            ),
        ]
        summary[kind] = {
            "healthyFirstS": [round(s.healthy_s, 3) for s in first],
            "healthyLaterS": [round(s.healthy_s, 3) for s in later],
            "cpuFirstS": [round(s.cpu_s, 3) for s in first],
            "cpuLaterS": [round(s.cpu_s, 3) for s in later],
            "idleRssMiB": [round(v, 1) for v in rss],
            "hwmMiB": [round(s.hwm_mib, 1) for s in starts if s.kind == kind],
        }
    rows += [
        Row(
            "import connector.cli (median of 3)",
            f"{cli_profile.total_us / 1e6:.2f} s, {cli_profile.modules} modules",
        ),
        Row(
            "imports of a whole serve start (SQLite, later run)",
            f"{serve_profile.total_us / 1e6:.2f} s, {serve_profile.modules} modules; "
            f"{rss_imports:.1f} MiB RSS when imported into a bare interpreter",
        ),
        *(
            Row(
                f"  {package}: own import time / RSS it adds (in serve's order)",
                f"{us / 1e3:,.0f} ms / {rss_packages.get(package, math.nan):.1f} MiB",
            )
            for package, us in list(serve_profile.by_package.items())[:12]
        ),
        Row(
            "imported by a default (SQLite) serve, not needed by it (ms / MiB alone)",
            ", ".join(
                f"{p} {serve_profile.by_package[p] / 1e3:.0f} / {alone[p]:.1f}" for p in not_needed
            )
            or "none",
        ),
    ]
    print_table("bench/startup.py — connector serve: start -> healthy and idle RSS", rows)
    print("slowest modules of a serve start (own / cumulative ms):")
    for name, own, cumulative in serve_profile.top_modules:
        print(f"  {name:<50} {own / 1e3:8.1f} {cumulative / 1e3:8.1f}")
    print_summary(
        {
            **summary_head("startup", info),
            "loadBefore": load_before,
            "loadAfter": load_after,
            "noisy": noisy,
            "trials": args.trials,
            "later": args.later,
            "idleSeconds": args.idle,
            **summary,
            "importCliS": json_number(cli_profile.total_us / 1e6, 3),
            "importServeS": json_number(serve_profile.total_us / 1e6, 3),
            "importByPackageMs": {
                k: round(v / 1e3, 1) for k, v in list(serve_profile.by_package.items())[:12]
            },
            "importRssMiB": json_number(rss_imports, 1),
            "rssByPackageMiB": {k: json_number(v, 1) for k, v in list(rss_packages.items())[:12]},
            "notNeededAloneMiB": {k: json_number(v, 1) for k, v in alone.items()},
            "targetsMet": met,
        }
    )
    return 1 if args.strict and not all(met.values()) else 0


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_main(lambda: main(arguments)))
