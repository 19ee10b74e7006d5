"""File transfer benchmark: streamed encrypted upload and download through one connector.

Starts a backbone and one connector (separate processes, 127.0.0.1, temp dirs), uploads a file of
incompressible data (default 1 GiB) as a streamed multipart body, downloads it back while hashing
it, and prints MB/s up and down next to the raw single-core AES-256-GCM speed, plus the connector
process's peak RSS growth during the transfers.

    python bench/files.py                # 1 GiB
    python bench/files.py --size-mib 256
    python bench/files.py --quick        # 32 MiB smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    MIB,
    BenchError,
    Cluster,
    Connector,
    CpuMeter,
    Row,
    RssSampler,
    check,
    client_session,
    header_line,
    indent,
    log,
    machine_info,
    mb_per_s,
    print_summary,
    print_table,
    proc_status_kib,
    run_main,
    summary_head,
)

TARGET_UP_MBS = 200.0
TARGET_DOWN_MBS = 400.0
TARGET_RSS_MIB = 64.0
BLOCK_MIB = 64  # size of the random block the data is cut from
HASH_BATCH = 4 * MIB  # the download is hashed in a worker thread in batches of this size


# --------------------------------------------------------------------------- test data


class Source:
    """``size`` bytes of incompressible data, produced streaming in 1 MiB pieces.

    One ``os.urandom`` block of up to 64 MiB is reused; each MiB starts with its own 8-byte
    counter, so no two MiB of the stream are equal and it does not compress or deduplicate.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        blocks = max(1, min(BLOCK_MIB, -(-size // MIB)))
        self.block = memoryview(os.urandom(blocks * MIB))
        self.blocks = blocks

    def pieces(self) -> Iterator[bytes]:
        remaining, index = self.size, 0
        while remaining > 0:
            length = min(MIB, remaining)
            offset = (index % self.blocks) * MIB
            if length >= 8:
                piece = index.to_bytes(8, "big") + self.block[offset + 8 : offset + length]
            else:
                piece = bytes(self.block[offset : offset + length])
            yield piece
            remaining -= length
            index += 1

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for piece in self.pieces():
            digest.update(piece)
        return digest.hexdigest()


# --------------------------------------------------------------------------- raw crypto speed


def crypto_speed(seconds: float) -> dict[str, float]:
    """Single-core AES-256-GCM encrypt/decrypt and SHA-256 over 1 MiB buffers, in MB/s."""
    key = AESGCM.generate_key(bit_length=256)
    aead = AESGCM(key)
    buf = os.urandom(MIB)
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, buf, None)

    def run(fn: Any) -> float:
        fn()  # warm up
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(8):
                fn()
            done += 8 * MIB
        return mb_per_s(done, elapsed)

    return {
        "aesGcmEncrypt": run(lambda: aead.encrypt(nonce, buf, None)),
        "aesGcmDecrypt": run(lambda: aead.decrypt(nonce, sealed, None)),
        "sha256": run(lambda: hashlib.sha256(buf).digest()),
    }


# --------------------------------------------------------------------------- transfers
#
# The transfers use plain blocking sockets in a worker thread instead of aiohttp's client:
# on a small machine the client shares the CPU with the connector and the backbone, and
# aiohttp's client costs ~0.8 CPU-seconds per GiB where recv_into/sendall cost ~0.2, so the
# client would otherwise be part of what is measured.


class _Reader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class HttpAnswer:
    """Status line, headers and a body reader of one HTTP/1.1 response."""

    def __init__(self, reader: _Reader) -> None:
        self.reader = reader
        line = reader.readline(65536)
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise BenchError(f"not an HTTP answer: {line[:200]!r}")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        for _ in range(256):
            line = reader.readline(65536)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()
        length = self.headers.get("content-length")
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self.left = None if self.chunked or length is None else int(length)
        self.chunk_left = 0
        self.done = self.left == 0

    def readinto(self, view: memoryview) -> int:
        """Body bytes into ``view``; 0 at the end (Content-Length, chunked or EOF framing)."""
        if self.done:
            return 0
        if self.chunked:
            if self.chunk_left == 0:
                size_line = self.reader.readline(1024)
                self.chunk_left = int(size_line.split(b";")[0].strip() or b"0", 16)
                if self.chunk_left == 0:
                    while self.reader.readline(65536) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    self.done = True
                    return 0
            n = self.reader.readinto(view[: self.chunk_left])
            if not n:
                raise BenchError("connection closed inside a chunk")
            self.chunk_left -= n
            if self.chunk_left == 0:
                self.reader.readline(16)  # CRLF after the chunk
            return int(n)
        if self.left is not None:
            view = view[: self.left]
        n = self.reader.readinto(view)
        if not n:
            if self.left:
                raise BenchError(f"connection closed with {self.left} body bytes missing")
            self.done = True
            return 0
        if self.left is not None:
            self.left -= n
            self.done = self.left == 0
        return int(n)

    def read_all(self, limit: int = 16 * MIB) -> bytes:
        out = bytearray()
        buf = memoryview(bytearray(MIB))
        while len(out) < limit and (n := self.readinto(buf)):
            out += buf[:n]
        return bytes(out)


def _connect(base_url: str, time_limit: float) -> socket.socket:
    parts = urlsplit(base_url)
    sock = socket.create_connection(
        (parts.hostname or "127.0.0.1", parts.port or 80), timeout=min(60.0, time_limit)
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _request_head(method: str, base_url: str, path: str, headers: dict[str, str]) -> bytes:
    host = urlsplit(base_url).netloc
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def upload_blocking(conn: Connector, source: Source, time_limit: float) -> tuple[int, bytes, float]:
    """POST the file as a multipart body with an exact Content-Length, written with sendall.

    Returns (status, answer body, seconds from connecting to the complete answer).
    """
    boundary = "bench" + os.urandom(12).hex()
    preamble = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="bench.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    epilogue = f"\r\n--{boundary}--\r\n".encode()
    head = _request_head(
        "POST",
        conn.url,
        "/api/v1/files",
        {
            **conn.headers,
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(preamble) + source.size + len(epilogue)),
        },
    )
    deadline = time.monotonic() + time_limit
    start = time.perf_counter()
    with _connect(conn.url, time_limit) as sock:
        send_error: OSError | None = None
        try:
            sock.sendall(head + preamble)
            for piece in source.pieces():
                sock.sendall(piece)
                if time.monotonic() > deadline:
                    raise BenchError(f"upload not finished within {time_limit:.0f} s")
            sock.sendall(epilogue)
        except OSError as exc:  # the server may answer (e.g. 413) and close early
            send_error = exc
        with sock.makefile("rb") as reader:
            try:
                answer = HttpAnswer(cast(_Reader, reader))
            except (OSError, BenchError) as exc:
                raise BenchError(
                    f"upload: no answer ({exc!r}; while sending: {send_error!r})"
                ) from None
            body = answer.read_all()
    return answer.status, body, time.perf_counter() - start


def download_blocking(
    conn: Connector, file_id: str, time_limit: float
) -> tuple[int, int, str, float, str | None, bytes]:
    """GET the plaintext with recv_into, hashing each full 4 MiB buffer in a second thread.

    Returns (status, bytes, sha256 hex, seconds until the last byte, Content-Length, error body).
    """
    digest = hashlib.sha256()
    buffers = [memoryview(bytearray(HASH_BATCH)) for _ in range(2)]
    pending: list[Future[None] | None] = [None, None]
    received, which = 0, 0
    deadline = time.monotonic() + time_limit
    head = _request_head("GET", conn.url, f"/api/v1/files/{file_id}/download", conn.headers)
    start = time.perf_counter()
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as pool,
        _connect(conn.url, time_limit) as sock,
    ):
        sock.sendall(head)
        with sock.makefile("rb", buffering=256 * 1024) as reader:
            answer = HttpAnswer(cast(_Reader, reader))
            content_length = answer.headers.get("content-length")
            if answer.status != 200:
                return answer.status, 0, "", 0.0, content_length, answer.read_all()
            while True:
                view = buffers[which]
                if (job := pending[which]) is not None:
                    job.result()  # the hash of this buffer's previous contents is done
                filled = 0
                while filled < HASH_BATCH and (n := answer.readinto(view[filled:])):
                    filled += n
                received += filled
                if filled:
                    pending[which] = pool.submit(digest.update, view[:filled])
                if filled < HASH_BATCH:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"download not finished within {time_limit:.0f} s")
                which = 1 - which
            elapsed = time.perf_counter() - start
            for job in pending:
                if job is not None:
                    job.result()
    return 200, received, digest.hexdigest(), elapsed, content_length, b""


def failed(conn: Connector, message: str) -> BenchError:
    """A failed transfer: ``message`` and the connector's last output."""
    return BenchError(f"{message}\nconnector output:\n{indent(conn.proc.tail(40))}")


def answer_text(raw: bytes) -> str:
    """The start of an error answer's body, for a message."""
    return raw[:2000].decode(errors="replace")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (1024)")
    parser.add_argument("--quick", action="store_true", help="32 MiB smoke run")
    parser.add_argument(
        "--crypto-seconds", type=float, default=1.0, help="time per raw crypto measurement"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="per transfer (default: ≥ 10 MB/s)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib = min(args.size_mib, 32)
        args.crypto_seconds = min(args.crypto_seconds, 0.3)
    if args.size_mib <= 0:
        parser.error("--size-mib must be positive")
    if args.timeout is None:
        args.timeout = max(120.0, args.size_mib * MIB / 10e6)
    return args


async def main(args: argparse.Namespace) -> int:
    info = machine_info()
    print(header_line(info), flush=True)
    size = args.size_mib * MIB

    log(f"raw crypto speed ({args.crypto_seconds:.1f} s each, 1 MiB buffers)")
    crypto = crypto_speed(args.crypto_seconds)

    with Cluster.create("bench-files-", keep=args.keep) as cluster:
        source = Source(size)
        async with client_session() as session:
            backbone = cluster.start_backbone()
            await backbone.wait_ready(session)
            conn = cluster.start_connector("a", backbone.url, max_size=max(2 << 30, 2 * size))
            # The expected hash is computed while the connector starts, not during the timing.
            expected_task = asyncio.create_task(asyncio.to_thread(source.sha256))
            await conn.wait_ready(session)
            expected = await expected_task

            sampler = RssSampler(conn.proc.pid)
            bb_sampler = RssSampler(backbone.proc.pid)
            sampler.start()
            bb_sampler.start()
            log(
                f"upload {args.size_mib} MiB "
                f"(connector VmRSS {sampler.rss_before_kib / 1024:.1f} MiB, "
                f"VmHWM {sampler.hwm_before_kib / 1024:.1f} MiB)"
            )
            pids = {"connector": conn.proc.pid, "backbone": backbone.proc.pid}
            cpu_up, cpu_down = CpuMeter(pids), CpuMeter(pids)
            cpu_up.start()
            try:
                status, raw, up_s = await asyncio.to_thread(
                    upload_blocking, conn, source, args.timeout
                )
            except (OSError, BenchError) as exc:
                cluster.check_alive()
                raise failed(conn, f"upload failed: {exc!r}") from None
            if status != 201:
                raise failed(conn, f"POST /api/v1/files answered {status}: {answer_text(raw)}")
            file_json = json.loads(raw)
            cpu_up.stop()
            up_growth = sampler.mark_phase("upload")
            file_id = str(file_json["id"])
            log(f"uploaded {file_id} in {up_s:.2f} s; download")
            cpu_down.start()
            try:
                status, down_bytes, down_sha, down_s, content_length, raw = await asyncio.to_thread(
                    download_blocking, conn, file_id, args.timeout
                )
            except (OSError, BenchError) as exc:
                cluster.check_alive()
                raise failed(conn, f"download failed: {exc!r}") from None
            if status != 200:
                raise failed(
                    conn,
                    f"GET /api/v1/files/{file_id}/download answered {status}: {answer_text(raw)}",
                )
            cpu_down.stop()
            down_growth = sampler.mark_phase("download")
            await sampler.stop()
            await bb_sampler.stop()
            cluster.check_alive()
            log(f"downloaded in {down_s:.2f} s")
            rss_after = proc_status_kib(conn.proc.pid, "VmRSS") or 0

    up_mbs = mb_per_s(size, up_s)
    down_mbs = mb_per_s(down_bytes, down_s)
    server_sha = str(file_json.get("sha256", ""))
    server_size = file_json.get("size")
    integrity = {
        "serverSha256Matches": server_sha == expected,
        "serverSizeMatches": server_size == size,
        "downloadSha256Matches": down_sha == expected,
        "downloadSizeMatches": down_bytes == size,
        "contentLengthMatches": content_length == str(size),
    }
    growth = sampler.growth_mib
    rows = [
        Row("file size", f"{args.size_mib} MiB ({size / 1e6:,.0f} MB)"),
        Row("upload time", f"{up_s:.2f} s"),
        Row(
            "upload",
            f"{up_mbs:,.1f} MB/s",
            f">= {TARGET_UP_MBS:.0f} MB/s",
            check(up_mbs >= TARGET_UP_MBS),
        ),
        Row("download time", f"{down_s:.2f} s"),
        Row(
            "download",
            f"{down_mbs:,.1f} MB/s",
            f">= {TARGET_DOWN_MBS:.0f} MB/s",
            check(down_mbs >= TARGET_DOWN_MBS),
        ),
        Row("raw AES-256-GCM encrypt (1 core)", f"{crypto['aesGcmEncrypt']:,.0f} MB/s"),
        Row("raw AES-256-GCM decrypt (1 core)", f"{crypto['aesGcmDecrypt']:,.0f} MB/s"),
        Row("raw SHA-256 (1 core)", f"{crypto['sha256']:,.0f} MB/s"),
        Row("upload / raw AES encrypt", f"{up_mbs / crypto['aesGcmEncrypt']:.1%}"),
        Row("download / raw AES decrypt", f"{down_mbs / crypto['aesGcmDecrypt']:.1%}"),
        Row("connector VmRSS before", f"{sampler.rss_before_kib / 1024:.1f} MiB"),
        Row(
            "connector VmHWM before / after",
            f"{sampler.hwm_before_kib / 1024:.1f} / {sampler.hwm_after_kib / 1024:.1f} MiB",
        ),
        Row("connector RSS growth, upload", f"{up_growth / 1024:.1f} MiB"),
        Row("connector RSS growth, download", f"{down_growth / 1024:.1f} MiB"),
        Row(
            "connector peak RSS growth",
            f"{growth:.1f} MiB",
            f"< {TARGET_RSS_MIB:.0f} MiB",
            check(growth < TARGET_RSS_MIB),
        ),
        Row("connector VmRSS after", f"{rss_after / 1024:.1f} MiB"),
        Row("RSS samples (every 50 ms)", f"{sampler.samples}"),
        Row("backbone peak RSS growth", f"{bb_sampler.growth_mib:.1f} MiB"),
        Row(
            "sha256 (uploaded = stored = downloaded)",
            "ok" if all(integrity.values()) else "MISMATCH",
            "equal",
            check(all(integrity.values())),
        ),
    ]
    for label, meter, wall in (("upload", cpu_up, up_s), ("download", cpu_down, down_s)):
        for row in meter.rows(wall):
            row.metric = f"{row.metric}, {label}"
            rows.append(row)
    print_table(f"bench/files.py — {args.size_mib} MiB through one connector", rows)
    if not all(integrity.values()):
        print(f"integrity: {integrity}")
        print(f"expected sha256 {expected}, server {server_sha}, downloaded {down_sha}")
        print(
            f"expected size {size}, server {server_size}, downloaded {down_bytes}, "
            f"Content-Length {content_length}"
        )
    met = {
        "upload": up_mbs >= TARGET_UP_MBS,
        "download": down_mbs >= TARGET_DOWN_MBS,
        "rss": growth < TARGET_RSS_MIB,
    }
    print_summary(
        {
            **summary_head("files", info),
            "sizeBytes": size,
            "uploadSeconds": round(up_s, 3),
            "uploadMBps": round(up_mbs, 1),
            "downloadSeconds": round(down_s, 3),
            "downloadMBps": round(down_mbs, 1),
            "aesGcmEncryptMBps": round(crypto["aesGcmEncrypt"], 1),
            "aesGcmDecryptMBps": round(crypto["aesGcmDecrypt"], 1),
            "sha256MBps": round(crypto["sha256"], 1),
            "uploadVsAes": round(up_mbs / crypto["aesGcmEncrypt"], 4),
            "downloadVsAes": round(down_mbs / crypto["aesGcmDecrypt"], 4),
            "rssBeforeMiB": round(sampler.rss_before_kib / 1024, 1),
            "rssGrowthMiB": round(growth, 1),
            "rssGrowthUploadMiB": round(up_growth / 1024, 1),
            "rssGrowthDownloadMiB": round(down_growth / 1024, 1),
            "cpuSecondsUpload": cpu_up.summary(),
            "cpuSecondsDownload": cpu_down.summary(),
            "integrityOk": all(integrity.values()),
            "targetsMet": met,
        }
    )
    if not all(integrity.values()):
        return 1
    return 1 if args.strict and not all(met.values()) else 0


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_main(lambda: main(arguments)))
