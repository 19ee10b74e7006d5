"""What the broker tests share: a TCP proxy that makes outages, and throwaway TLS certificates.

The broker tests run against real brokers that other tests and processes share, so a test
never stops or reconfigures the broker itself: it points the publisher at a :class:`TcpProxy`
in front of the real port and breaks that instead, and it checks TLS either through the same
proxy terminating TLS (:func:`tls_server_context`) or against a server of its own
(:func:`wait_until_listening`), with a CA from :func:`make_tls_files` that no system trusts.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from pathlib import Path
from typing import NamedTuple

import pytest

LOOPBACK = "127.0.0.1"


def accepts_connections(host: str, port: int) -> bool:
    """Whether something listens at ``host:port`` now: a module skips its tests, saying why,
    rather than failing them all on a machine without that broker."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


async def wait_until_listening(
    port: int, process: asyncio.subprocess.Process, *, host: str = LOOPBACK
) -> None:
    """Return once a server the test started accepts connections at ``host:port`` (a started
    process is not a listening one yet); skip if it exited at once (it cannot run here: say so
    rather than fail), fail after 5 s."""
    for _ in range(100):
        if process.returncode is not None:
            pytest.skip(f"the TLS server exited at once (status {process.returncode})")
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    pytest.fail(f"nothing listens on {host}:{port} after 5 s")


class TcpProxy:
    """127.0.0.1:``port`` forwarding to a real broker (``upstream``), for outages on demand.

    - :meth:`stop` closes the listener and resets every connection through it (the broker goes
      away); :meth:`start` listens on the same port again, so the same publisher finds the
      broker back where it was.
    - :meth:`cut` resets the connections only; :attr:`cut_after` does so in the middle of a
      batch (a connection lost with messages in flight).
    - :attr:`mute` drops what the broker says: its confirms or acks never arrive, though the
      messages did and the connection stays up.
    - :meth:`stall` holds what the broker says until :meth:`resume` (a broker that stops
      answering without closing, then answers late).

    With ``tls`` (see :func:`tls_server_context`) it terminates TLS in front of a plaintext
    port: a TLS broker without reconfiguring the shared one.
    """

    def __init__(
        self, upstream: tuple[str, int], *, port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.upstream = upstream
        self.port = port
        """0 picks a free port at the first :meth:`start`; it is kept across stop and start."""
        self.tls = tls
        self.cut_after: int | None = None
        """Cut every connection once :attr:`forwarded` reaches this many bytes."""
        self.mute = False
        """Swallow what the broker says (its confirms, acks) instead of passing it on."""
        self.forwarded = 0
        """Bytes that went on to the broker so far."""
        self.reached_broker = asyncio.Event()
        """Set whenever bytes from a client went on to the broker; clear it to wait for more."""
        self.connections = 0
        """Connections accepted so far: a publisher that reconnected made one more."""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Close the listener, reset every connection and wait until their pipes have ended,
        so that nothing of this proxy is still moving bytes when the test goes on."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.cut()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        if not self._flowing.is_set():
            # Wake the answers held by a stall so that they see their connection gone and end
            # (without this, stop() would wait for a resume()); the stall itself stays.
            self._flowing.set()
            self._flowing.clear()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(upstream_writer)
            await asyncio.gather(
                self._pipe(reader, upstream_writer, to_broker=True),
                self._pipe(upstream_reader, writer, to_broker=False),
            )
        except OSError:
            pass
        finally:
            for each in (writer, upstream_writer):
                if each is not None:
                    self._writers.discard(each)
                    each.transport.abort()
            self._tasks.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_broker: bool
    ) -> None:
        try:
            while data := await reader.read(1 << 16):
                if not to_broker:
                    if self.mute:
                        continue
                    if not await self._until_flowing(writer):
                        break
                writer.write(data)
                await writer.drain()
                if to_broker:
                    self.forwarded += len(data)
                    self.reached_broker.set()
                    if self.cut_after is not None and self.forwarded >= self.cut_after:
                        self.cut_after = None
                        self.cut()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()

    async def _until_flowing(self, client: asyncio.StreamWriter) -> bool:
        """Wait out a stall; False if the client's connection was cut meanwhile."""
        while not self._flowing.is_set():
            await self._flowing.wait()
            if client.transport.is_closing():
                return False
        return True


class TlsFiles(NamedTuple):
    """PEM files from :func:`make_tls_files`."""

    ca_file: Path
    """What a publisher is configured with (``tls_ca_file``) to trust the server."""
    cert_file: Path
    key_file: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA and a server certificate it signed for localhost and 127.0.0.1, written to
    ``directory``.

    No system trusts the CA, so a publisher verifying the server with the default CAs must
    refuse it and one given the CA file must accept it: both halves of "verifies the broker".
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "connector test CA")])
    ca = (
        certificate(ca_name, ca_key, ca_name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    server = (
        certificate(server_name, key, ca_name)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def tls_server_context(files: TlsFiles) -> ssl.SSLContext:
    """The server side of TLS with the certificate in ``files``: what a :class:`TcpProxy` needs
    to play a TLS broker in front of a plaintext port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert_file, files.key_file)
    return context
