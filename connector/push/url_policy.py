"""Where push requests may go: the guard against server-side request forgery (DESIGN.md section 7).

Whoever may register a webhook chooses a URL the connector will POST to from inside the
operator's network. Aimed at a cloud metadata service (``169.254.169.254`` and its relatives),
such a request can read the machine's credentials; so those addresses are refused always, in
every spelling: link-local ranges, the per-cloud metadata addresses, ``0.0.0.0/8`` and ``::``,
the IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64, 6to4), the metadata host
names, and odd numeric IPv4 spellings (``http://2852039166/``, ``0xa9fea9fe``, octal) that the C
resolver would quietly turn into one of them. Loopback and private ranges stay allowed: receivers
often live in an intranet, and tests on loopback. ``delivery.allowed_hosts`` narrows further.

Checking the URL when a webhook is registered is not enough: a name that resolved to a public
address then may resolve to a metadata address later (DNS rebinding). So the check is made in
three places, each cheap where it runs often:

- :meth:`UrlPolicy.check` when a URL is given and before each request: syntax, literal
  addresses, names, ``allowed_hosts``; no I/O. aiohttp does not resolve a literal IP address, so
  this is the only check such a URL gets at send time.
- :meth:`UrlPolicy.check_resolved` when a URL is given: also resolves the name and refuses it if
  any address is refused; a name that does not resolve (yet) passes.
- :meth:`UrlPolicy.resolver` for the push HTTP session's ``TCPConnector``: every connection
  resolves through it, and refused addresses are dropped before aiohttp can connect to them.

Requests must not go through an HTTP proxy taken from the environment (``trust_env``): the proxy
would resolve the name, past the resolver.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

__all__ = [
    "MAX_URL_LENGTH",
    "AddressRefused",
    "PolicyResolver",
    "UrlPolicy",
    "WebhookUrlRefused",
    "check_allowed_hosts",
]

MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT = 10.0  # seconds check_resolved waits for the name to resolve

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebhookUrlRefused(ValueError):
    """Push requests may not go to this URL; ``str(exc)`` says why, for a person to read."""


class AddressRefused(OSError, WebhookUrlRefused):
    """Every address a name resolved to is refused.

    Raised by :class:`PolicyResolver`; an ``OSError`` so that aiohttp reports it as the
    connection's failure (``aiohttp.ClientConnectorDNSError``, whose ``os_error`` is this).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EACCES, reason)

    def __str__(self) -> str:
        return str(self.strerror)


# Refused always, with the reason shown. Order matters only for the reason given.
_REFUSED_V4: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.IPv4Network("169.254.169.254/32"), "the cloud metadata service"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "link-local (cloud metadata services live there)"),
    (ipaddress.IPv4Network("100.100.100.200/32"), "Alibaba Cloud's metadata service"),
    (ipaddress.IPv4Network("168.63.129.16/32"), "Azure's platform address (WireServer)"),
    (ipaddress.IPv4Network("0.0.0.0/8"), '"this network" (it reaches the local host)'),
)
_REFUSED_V6: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.IPv6Network("fd00:ec2::254/128"), "AWS's IPv6 metadata service"),
    (ipaddress.IPv6Network("fe80::/10"), "IPv6 link-local"),
    (ipaddress.IPv6Network("::/128"), "the unspecified address (it reaches the local host)"),
)
_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata", "metadata.goog"})

_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
_CANONICAL_IPV4 = re.compile(
    r"^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])$"
)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it embeds one a packet would reach."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    plain = ipaddress.IPv6Address(int(address))  # without a zone
    if plain in _NAT64:
        return ipaddress.IPv4Address(int(plain) & 0xFFFFFFFF)
    if plain in _IPV4_COMPATIBLE and int(plain) > 1:  # not :: and ::1, which are IPv6's own
        return ipaddress.IPv4Address(int(plain))
    return None


def _candidates(address: IPAddress) -> list[IPAddress]:
    """The address, and the IPv4 address it embeds, if any."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        plain = ipaddress.IPv6Address(int(address))  # the zone (%eth0) does not matter here
        return [plain] if embedded is None else [plain, embedded]
    return [address]


def _always_refused(address: IPAddress) -> str | None:
    """Why ``address`` is refused always, or None when it is not."""
    own, *embedded = _candidates(address)
    why = _refused_as(own)
    if why is not None:
        return f"{address} is {why}"
    for candidate in embedded:
        why = _refused_as(candidate)
        if why is not None:
            return f"{address} embeds {candidate}, which is {why}"
    return None


def _refused_as(address: IPAddress) -> str | None:
    for net, why in _REFUSED_V4 if address.version == 4 else _REFUSED_V6:
        if address in net:
            return why
    return None


@dataclass(frozen=True, slots=True)
class _Host:
    """A URL's host, normalised: an address, or a lower-case ASCII name without a final dot."""

    name: str
    address: IPAddress | None


def _parse_host(raw: str) -> _Host:
    """Normalise a host (as yarl gives it: IDNA-encoded, lower case) or refuse its spelling."""
    if ":" in raw:  # only an IPv6 literal has one; yarl took the brackets off
        try:
            v6 = ipaddress.IPv6Address(raw)
        except ValueError:
            raise WebhookUrlRefused(f"host {raw!r} is not a valid IPv6 address") from None
        return _Host(str(v6), v6)
    name = raw.lower()
    if name.endswith("."):
        name = name[:-1]
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise WebhookUrlRefused(f"host {raw!r} is not a valid host name")
    if _NUMERIC_LABEL.match(labels[-1]):
        # Ends in a number: the C resolver (inet_aton) and browsers read it as an IPv4 address,
        # also in decimal, octal and hexadecimal parts; only the usual spelling is accepted.
        if not _CANONICAL_IPV4.match(name):
            try:
                means = f", which the resolver reads as {socket.inet_ntoa(socket.inet_aton(name))}"
            except OSError:
                means = ""
            raise WebhookUrlRefused(
                f"host {raw!r} is not an IPv4 address in dotted decimal (a.b.c.d){means}"
            )
        v4 = ipaddress.IPv4Address(name)
        return _Host(str(v4), v4)
    return _Host(name, None)


@dataclass(frozen=True, slots=True)
class _Allowed:
    names: frozenset[str]
    suffixes: tuple[str, ...]  # ".example.com" for "*.example.com"
    networks: tuple[IPNetwork, ...]

    def __bool__(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def name_matches(self, name: str) -> bool:
        return name in self.names or any(name.endswith(suffix) for suffix in self.suffixes)

    def address_matches(self, address: IPAddress) -> bool:
        return any(
            candidate.version == net.version and candidate in net
            for candidate in _candidates(address)
            for net in self.networks
        )


def _parse_allowed(entries: Iterable[str]) -> _Allowed:
    names: set[str] = set()
    suffixes: list[str] = []
    networks: list[IPNetwork] = []
    for entry in entries:
        text = entry.strip().lower()
        try:
            if "://" in text:
                raise ValueError("a host name or address, not a URL")
            if "/" in text:
                try:
                    net = ipaddress.ip_network(text)
                except ValueError as exc:
                    raise ValueError(f"not an IP network: {exc}") from None
                for refused, why in _REFUSED_V4 + _REFUSED_V6:
                    if net.network_address in refused and net.broadcast_address in refused:
                        raise ValueError(f"refused always: {net} is {why}")
                networks.append(net)
                continue
            wildcard = text.startswith("*.")
            if wildcard and text == "*.":
                raise ValueError("a wildcard needs a name after '*.'")
            host = _parse_host(_idna(text[2:] if wildcard else text))
            if host.address is not None:
                if wildcard:
                    raise ValueError("a wildcard needs a name after '*.', not an address")
                refusal = _always_refused(host.address)
                if refusal is not None:
                    raise ValueError(f"refused always: {refusal}")
                networks.append(ipaddress.ip_network(host.address))
            elif wildcard:
                suffixes.append("." + host.name)
            elif host.name in _METADATA_NAMES:
                raise ValueError("refused always: a cloud metadata service's name")
            else:
                names.add(host.name)
        except (ValueError, UnicodeError) as exc:
            raise ValueError(f"delivery.allowed_hosts entry {entry!r}: {exc}") from None
    return _Allowed(frozenset(names), tuple(suffixes), tuple(networks))


def _idna(text: str) -> str:
    """A host name as yarl puts it in a URL: IDNA-encoded, lower case."""
    if not text:
        raise ValueError("empty")
    if "*" in text:
        raise ValueError("'*' only as the whole first label ('*.example.com')")
    if ":" in text:
        return text
    host = URL.build(scheme="http", host=text).raw_host
    if host is None:
        raise ValueError("not a host name")
    return host


def check_allowed_hosts(entries: Sequence[str]) -> list[str]:
    """Validate ``delivery.allowed_hosts`` and return it unchanged; ValueError names a bad entry.

    An entry is a host name (``hooks.example.com``), a wildcard for its subdomains at any depth
    (``*.example.com``; not ``example.com`` itself), an IP address or a network (``10.0.0.0/8``,
    ``fd00::/8``). Entries that could only ever allow refused addresses are errors too.
    """
    _parse_allowed(entries)
    return list(entries)


class UrlPolicy:
    """The rules for push URLs, with ``delivery.allowed_hosts`` parsed once.

    With ``allowed_hosts`` empty, any host not refused always may be used. Otherwise a host name
    is allowed when it matches a name entry; if it does not and there are address entries, it
    is allowed when every address it resolves to lies in them (checked by
    :meth:`check_resolved` and by the resolver; :meth:`check` cannot know yet). A literal
    address is allowed when it lies in an address entry. ``resolve_timeout`` bounds the wait
    for a name in :meth:`check_resolved`.
    """

    def __init__(
        self, allowed_hosts: Sequence[str] = (), *, resolve_timeout: float = RESOLVE_TIMEOUT
    ) -> None:
        self._allowed = _parse_allowed(allowed_hosts)
        self._resolve_timeout = resolve_timeout

    def check(self, url: str) -> None:
        """Refuse ``url`` by its spelling alone, without I/O; cheap enough for every request."""
        self._check(url)

    async def check_resolved(self, url: str) -> None:
        """:meth:`check`, then refuse the URL when any address its host resolves to is refused.

        A name that does not resolve, or not within ``resolve_timeout`` seconds, is not refused:
        its DNS record may come later, and the resolver checks every connection anyway.
        """
        parsed, host = self._check(url)
        if host.address is not None:
            return
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._resolve_timeout):
                infos = await loop.getaddrinfo(host.name, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError, TimeoutError):
            return
        for _family, _type, _proto, _canonname, sockaddr in infos:
            refusal = self.address_refusal(host.name, str(sockaddr[0]))
            if refusal is not None:
                raise WebhookUrlRefused(f"host {host.name!r} resolves to {refusal}")

    def resolver(self, inner: AbstractResolver | None = None) -> PolicyResolver:
        """A resolver for ``aiohttp.TCPConnector(resolver=...)``; it never gives a refused address.

        ``inner`` does the resolving; by default aiohttp's :class:`~aiohttp.ThreadedResolver`
        (the system's resolver, ``/etc/hosts`` included), created on first use.
        """
        return PolicyResolver(self, inner)

    def address_refusal(self, name: str, address: str) -> str | None:
        """Why ``name`` may not connect to ``address`` (as a resolver gives it), or None."""
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return f"{address!r}, which is not an IP address"
        refusal = _always_refused(parsed)
        if refusal is not None:
            return refusal
        if (
            self._allowed
            and not self._allowed.name_matches(name)
            and not self._allowed.address_matches(parsed)
        ):
            return f"{parsed}, which is not in delivery.allowed_hosts"
        return None

    def _check(self, url: str) -> tuple[URL, _Host]:
        if len(url) > MAX_URL_LENGTH:
            raise WebhookUrlRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
        if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
            raise WebhookUrlRefused("the URL contains spaces or control characters")
        if "#" in url:
            raise WebhookUrlRefused("the URL has a fragment ('#...'), which is never sent")
        try:
            parsed = URL(url)
        except (ValueError, TypeError) as exc:
            raise WebhookUrlRefused(f"not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https"):
            raise WebhookUrlRefused(
                f"only http and https URLs are allowed, not {parsed.scheme or 'none'!r}"
            )
        raw = parsed.raw_host
        if not raw:
            raise WebhookUrlRefused("the URL has no host")
        if parsed.raw_user is not None or parsed.raw_password is not None:
            raise WebhookUrlRefused(
                "the URL carries credentials (user:password@host); give them as auth instead"
            )
        host = _parse_host(raw)
        refusal = self._host_refusal(host)
        if refusal is not None:
            raise WebhookUrlRefused(refusal)
        return parsed, host

    def _host_refusal(self, host: _Host) -> str | None:
        """Why ``host`` is refused before resolving it, or None."""
        if host.address is not None:
            refusal = _always_refused(host.address)
            if (
                refusal is None
                and self._allowed
                and not self._allowed.address_matches(host.address)
            ):
                refusal = f"{host.address} is not in delivery.allowed_hosts"
            return refusal
        if host.name in _METADATA_NAMES:
            return f"host {host.name!r} is a cloud metadata service's name"
        if (
            self._allowed
            and not self._allowed.name_matches(host.name)
            and not self._allowed.networks
        ):
            return f"host {host.name!r} is not in delivery.allowed_hosts"
        return None

    def _check_name(self, raw: str) -> str:
        """The resolver's check of a name before resolving it; returns it normalised."""
        try:
            host = _parse_host(raw)
        except WebhookUrlRefused as exc:
            raise AddressRefused(str(exc)) from None
        refusal = self._host_refusal(host)
        if refusal is not None:
            raise AddressRefused(refusal)
        return host.name


class PolicyResolver(AbstractResolver):
    """Resolves through ``inner`` and keeps only the addresses a :class:`UrlPolicy` allows.

    When none is left it raises :class:`AddressRefused` (an ``OSError``), which aiohttp turns
    into ``ClientConnectorDNSError``: the connection is never made.
    """

    def __init__(self, policy: UrlPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        name = self._policy._check_name(host)
        if self._inner is None:
            self._inner = ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        refusals: list[str] = []
        for result in results:
            refusal = self._policy.address_refusal(name, result["host"])
            if refusal is None:
                kept.append(result)
            else:
                refusals.append(refusal)
        if not kept:
            why = "; ".join(refusals) if refusals else "no address"
            raise AddressRefused(f"host {name!r} resolves only to refused addresses: {why}")
        return kept

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
