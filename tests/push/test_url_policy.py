"""Where push requests may go: refusals by spelling, by resolution, and at connection time.

The connection-time tests send real aiohttp requests through ``TCPConnector(resolver=...)`` to a
server on loopback; a name is made to resolve to the metadata address by a stub inner resolver,
so no test depends on /etc/hosts or on DNS.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from connector.push.url_policy import (
    MAX_URL_LENGTH,
    AddressRefused,
    UrlPolicy,
    WebhookUrlRefused,
    check_allowed_hosts,
)

REFUSED = [
    # cloud metadata and link-local, literally
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://169.254.0.1/", "link-local"),
    ("http://169.254.169.254./", "cloud metadata"),
    ("http://100.100.100.200/latest/meta-data/", "Alibaba"),
    ("http://168.63.129.16/machine", "Azure"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "AWS"),
    ("http://[FD00:EC2:0:0:0:0:0:254]/", "AWS"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]:8080/", "link-local"),
    ("http://[febf:ffff::1]/", "link-local"),
    ("http://0.0.0.0:8080/", "this network"),
    ("http://0.1.2.3/", "this network"),
    ("http://[::]/", "unspecified"),
    # IPv6 forms that embed a refused IPv4 address
    ("http://[::ffff:169.254.169.254]/", "embeds 169.254.169.254"),
    ("http://[::ffff:a9fe:a9fe]/", "embeds 169.254.169.254"),
    ("http://[::169.254.169.254]/", "embeds 169.254.169.254"),
    ("http://[64:ff9b::169.254.169.254]/", "embeds 169.254.169.254"),
    ("http://[64:ff9b::a9fe:a9fe]/", "embeds 169.254.169.254"),
    ("http://[2002:a9fe:a9fe::1]/", "embeds 169.254.169.254"),
    ("http://[::ffff:100.100.100.200]/", "Alibaba"),
    ("http://[::ffff:0.0.0.0]/", "this network"),
    # odd numeric spellings the C resolver reads as an address
    ("http://2852039166/", "reads as 169.254.169.254"),
    ("http://0xa9fea9fe/", "reads as 169.254.169.254"),
    ("http://0xA9FEA9FE/", "reads as 169.254.169.254"),
    ("http://0251.0376.0251.0376/", "reads as 169.254.169.254"),
    ("http://169.254.43518/", "reads as 169.254.169.254"),
    ("http://0xa9.0xfe.0xa9.0xfe/", "reads as 169.254.169.254"),
    ("http://0/", "reads as 0.0.0.0"),
    ("http://127.1/", "dotted decimal"),
    ("http://010.0.0.1/", "dotted decimal"),
    ("http://1.2.3.256/", "dotted decimal"),
    ("http://99999999999/", "dotted decimal"),
    # metadata names
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("http://METADATA.Google.Internal./", "metadata"),
    ("http://metadata/", "metadata"),
    ("http://metadata.goog/", "metadata"),
    # syntax
    ("ftp://example.com/", "only http and https"),
    ("file:///etc/passwd", "only http and https"),
    ("gopher://127.0.0.1:6379/", "only http and https"),
    ("example.com/hook", "only http and https"),
    ("http:///hook", "no host"),
    ("http://user:secret@example.com/", "credentials"),
    ("http://user@example.com/", "credentials"),
    ("http://example.com/hook#part", "fragment"),
    ("http://example.com/hook#", "fragment"),
    ("http://exa mple.com/", "spaces or control"),
    ("http://example.com/\r\nX-Injected: 1", "spaces or control"),
    ("http://%31%36%39.254.169.254/", "not a valid host name"),
    ("http://a..b/", "not a valid host name"),
    ("http://example.com:99999/", "not a valid URL"),
    ("http://example.com/" + "a" * MAX_URL_LENGTH, "longer than 2048"),
]

ACCEPTED = [
    "http://127.0.0.1:8080/hook",
    "http://127.255.255.254/",
    "http://[::1]:8080/hook",
    "http://localhost:8080/hook",
    "http://10.1.2.3/",
    "http://192.168.1.10/",
    "http://172.16.0.1/",
    "http://[fd12:3456::1]/",
    "https://example.com/hooks?x=1&y=%23",
    "HTTPS://Example.COM./hooks",
    "https://bücher.example/hook",
    "https://engine.internal:8443/v2",
    "http://169.253.255.255/",
    "http://169.255.0.0/",
    "http://100.100.100.201/",
    "http://[fec0::1]/",
    "http://1.2.3.4a/",  # a name, not a number: the resolver decides
    "http://metadata.example.com/",
    "http://my-metadata/",
    "http://example.com/" + "a" * (MAX_URL_LENGTH - len("http://example.com/")),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_refused_urls_say_why(url: str, reason: str) -> None:
    with pytest.raises(WebhookUrlRefused, match="(?i)" + reason.replace(".", r"\.")):
        UrlPolicy().check(url)


@pytest.mark.parametrize("url", ACCEPTED)
def test_accepted_urls(url: str) -> None:
    UrlPolicy().check(url)


def test_the_refusal_is_a_value_error_with_a_readable_text() -> None:
    with pytest.raises(ValueError) as caught:
        UrlPolicy().check("http://169.254.169.254/")
    assert str(caught.value) == "169.254.169.254 is the cloud metadata service"


NOT_ALLOWED = r"not in delivery\.allowed_hosts"
NAMES = ["hooks.example.com", "*.corp.example"]
ADDRESSES = ["10.0.0.0/8", "192.168.1.7", "fd00:1::/32"]
ALLOWED = NAMES + ADDRESSES


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://hooks.example.com/x", True),
        ("https://HOOKS.example.com./x", True),
        ("https://other.example.com/x", False),
        ("https://example.com/x", False),
        ("https://evilhooks.example.com/x", False),
        ("https://hooks.example.com.evil.test/x", False),
        ("https://a.corp.example/x", True),
        ("https://a.b.corp.example/x", True),
        ("https://corp.example/x", False),  # the wildcard is for subdomains only
        ("https://xcorp.example/x", False),
        ("http://127.0.0.1/", False),
    ],
)
def test_allowed_host_names(url: str, allowed: bool) -> None:
    policy = UrlPolicy(NAMES)
    if allowed:
        policy.check(url)
    else:
        with pytest.raises(WebhookUrlRefused, match=NOT_ALLOWED):
            policy.check(url)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://10.0.0.1/", True),
        ("http://10.255.255.255/", True),
        ("http://11.0.0.1/", False),
        ("http://192.168.1.7/", True),
        ("http://192.168.1.8/", False),
        ("http://[::ffff:10.0.0.1]/", True),  # the same destination
        ("http://[fd00:1::5]/", True),
        ("http://[fd00:2::5]/", False),
        ("http://127.0.0.1/", False),
        ("http://[::1]/", False),
    ],
)
def test_allowed_addresses_and_networks(url: str, allowed: bool) -> None:
    policy = UrlPolicy(ALLOWED)
    if allowed:
        policy.check(url)
    else:
        with pytest.raises(WebhookUrlRefused, match=NOT_ALLOWED):
            policy.check(url)


def test_with_networks_allowed_a_name_is_decided_by_its_addresses() -> None:
    # check() cannot know where other.example.com points; the resolver and check_resolved do.
    policy = UrlPolicy(["10.0.0.0/8"])
    policy.check("https://other.example.com/")
    assert policy.address_refusal("other.example.com", "10.1.1.1") is None
    assert "not in delivery.allowed_hosts" in str(
        policy.address_refusal("other.example.com", "8.8.8.8")
    )
    assert "cloud metadata" in str(policy.address_refusal("other.example.com", "169.254.169.254"))


def test_allowed_hosts_never_allow_metadata() -> None:
    policy = UrlPolicy(["0.0.0.0/0", "::/0", "*.internal"])
    for url in (
        "http://169.254.169.254/",
        "http://[::ffff:169.254.169.254]/",
        "http://metadata.google.internal/",
    ):
        with pytest.raises(WebhookUrlRefused):
            policy.check(url)
    policy.check("http://93.184.215.14/")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("", "empty"),
        (" ", "empty"),
        ("*", "'\\*' only"),
        ("*.", "a wildcard needs a name"),
        ("a.*.example.com", "'\\*' only"),
        ("*example.com", "'\\*' only"),
        ("*.10.0.0.1", "a wildcard needs a name"),
        ("10.0.0.1/8", "host bits set"),
        ("10.0.0.0/33", "not an IP network"),
        ("300.1.1.1", "dotted decimal"),
        ("0x0a000001", "dotted decimal"),
        ("exa mple.com", "cannot contain ' '"),
        ("-bad.example.com", "not a valid host name"),
        ("https://example.com", "not a URL"),
        ("169.254.169.254", "refused always"),
        ("169.254.0.0/16", "refused always"),
        ("169.254.169.254/32", "refused always"),
        ("fe80::/64", "refused always"),
        ("metadata.google.internal", "refused always"),
    ],
)
def test_bad_allowed_hosts_entries_are_named(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        UrlPolicy(["example.com", entry])
    assert repr(entry) in str(caught.value)
    with pytest.raises(ValueError, match=message):
        check_allowed_hosts(["example.com", entry])


def test_check_allowed_hosts_returns_the_entries() -> None:
    assert check_allowed_hosts(ALLOWED) == ALLOWED
    assert check_allowed_hosts([]) == []
    UrlPolicy(["Bücher.Example"]).check("https://xn--bcher-kva.example/")


async def test_check_resolved_passes_localhost() -> None:
    await UrlPolicy().check_resolved("http://localhost:8080/hook")


async def test_check_resolved_does_not_refuse_a_name_that_does_not_resolve() -> None:
    await UrlPolicy().check_resolved("http://no-such-host.invalid/hook")


async def test_check_resolved_refuses_an_address_outside_the_allowed_networks() -> None:
    with pytest.raises(WebhookUrlRefused, match=r"'localhost' resolves to 127\.0\.0\.1, which"):
        await UrlPolicy(["10.0.0.0/8"]).check_resolved("http://localhost/")
    await UrlPolicy(["127.0.0.0/8"]).check_resolved("http://localhost/")


async def test_check_resolved_refuses_a_name_resolving_to_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: str, port: int, **kw: object) -> list[object]:
        if host == "rebind.example":
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port)),
            ]
        return await real(host, port, **kw)  # type: ignore[arg-type, no-any-return]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    policy = UrlPolicy()
    policy.check("http://rebind.example/")  # the spelling alone is fine
    with pytest.raises(WebhookUrlRefused, match=r"resolves to 169\.254\.169\.254 is the cloud"):
        await policy.check_resolved("http://rebind.example/")


async def test_check_resolved_checks_the_spelling_first() -> None:
    with pytest.raises(WebhookUrlRefused, match="metadata"):
        await UrlPolicy().check_resolved("http://metadata.google.internal/")


# ---- the resolver, at connection time ----


@dataclass
class Server:
    port: int = 0
    hits: list[str] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    seen = Server()

    async def handler(request: web.Request) -> web.Response:
        seen.hits.append(request.host)
        return web.Response(text="reached")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    seen.port = runner.addresses[0][1]
    yield seen
    await runner.cleanup()


class StubResolver(AbstractResolver):
    """Answers each name with the addresses ``answers`` gives now (so they can change)."""

    def __init__(self, answers: Callable[[str], list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in self.answers(host)
        ]

    async def close(self) -> None:
        pass


async def fetch(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=30)) as response:
        return await response.text()


async def test_a_name_resolving_to_metadata_never_reaches_a_server(server: Server) -> None:
    stub = StubResolver(lambda host: {"good.test": ["127.0.0.1"]}.get(host, ["169.254.169.254"]))
    connector = aiohttp.TCPConnector(resolver=UrlPolicy().resolver(stub))
    async with aiohttp.ClientSession(connector=connector) as http:
        assert await fetch(http, f"http://good.test:{server.port}/") == "reached"
        with pytest.raises(aiohttp.ClientConnectorDNSError) as caught:
            await fetch(http, f"http://evil.test:{server.port}/")
    assert server.hits == [f"good.test:{server.port}"]
    assert stub.asked == ["good.test", "evil.test"]
    assert isinstance(caught.value.os_error, AddressRefused)
    assert isinstance(caught.value.os_error, WebhookUrlRefused)
    assert str(caught.value.os_error) == (
        "host 'evil.test' resolves only to refused addresses:"
        " 169.254.169.254 is the cloud metadata service"
    )
    assert "169.254.169.254 is the cloud metadata service" in str(caught.value)


async def test_dns_rebinding_after_the_check_is_caught_at_connection_time(server: Server) -> None:
    answers = ["127.0.0.1"]
    policy = UrlPolicy()
    stub = StubResolver(lambda host: list(answers))
    connector = aiohttp.TCPConnector(
        resolver=policy.resolver(stub), use_dns_cache=False, force_close=True
    )  # a kept-alive connection would stay with the address it was made to: that is fine
    async with aiohttp.ClientSession(connector=connector) as http:
        policy.check(f"http://rebind.test:{server.port}/")
        assert await fetch(http, f"http://rebind.test:{server.port}/first") == "reached"
        answers[:] = ["::ffff:169.254.169.254"]  # the name now points elsewhere
        with pytest.raises(aiohttp.ClientConnectorDNSError, match=r"embeds 169\.254\.169\.254"):
            await fetch(http, f"http://rebind.test:{server.port}/second")
    assert len(server.hits) == 1


async def test_refused_addresses_are_dropped_and_the_rest_are_used(server: Server) -> None:
    stub = StubResolver(lambda host: ["169.254.169.254", "fe80::1", "127.0.0.1"])
    resolver = UrlPolicy().resolver(stub)
    assert [r["host"] for r in await resolver.resolve("mixed.test", 80)] == ["127.0.0.1"]
    connector = aiohttp.TCPConnector(resolver=resolver)
    async with aiohttp.ClientSession(connector=connector) as http:
        assert await fetch(http, f"http://mixed.test:{server.port}/") == "reached"
    assert len(server.hits) == 1


async def test_the_resolver_refuses_metadata_names_without_resolving_them(server: Server) -> None:
    stub = StubResolver(lambda host: ["127.0.0.1"])
    connector = aiohttp.TCPConnector(resolver=UrlPolicy().resolver(stub))
    async with aiohttp.ClientSession(connector=connector) as http:
        for host in ("metadata.google.internal", "0xa9fea9fe"):
            with pytest.raises(aiohttp.ClientConnectorDNSError) as caught:
                await fetch(http, f"http://{host}:{server.port}/")
            assert isinstance(caught.value.os_error, AddressRefused)
    assert stub.asked == []
    assert server.hits == []


async def test_the_resolver_applies_allowed_hosts(server: Server) -> None:
    stub = StubResolver(lambda host: ["127.0.0.1"])
    for allowed, host, reached in [
        (["hooks.test"], "hooks.test", True),
        (["hooks.test"], "other.test", False),  # refused before resolving
        (["127.0.0.0/8"], "other.test", True),
        (["10.0.0.0/8"], "other.test", False),  # resolves outside the networks
    ]:
        connector = aiohttp.TCPConnector(resolver=UrlPolicy(allowed).resolver(stub))
        async with aiohttp.ClientSession(connector=connector) as http:
            url = f"http://{host}:{server.port}/"
            if reached:
                assert await fetch(http, url) == "reached"
            else:
                with pytest.raises(aiohttp.ClientConnectorDNSError, match="allowed_hosts"):
                    await fetch(http, url)
    assert len(server.hits) == 2


async def test_the_default_inner_resolver_is_the_system_one(server: Server) -> None:
    connector = aiohttp.TCPConnector(resolver=UrlPolicy().resolver())
    async with aiohttp.ClientSession(connector=connector) as http:
        assert await fetch(http, f"http://localhost:{server.port}/") == "reached"
    connector = aiohttp.TCPConnector(resolver=UrlPolicy(["10.0.0.0/8"]).resolver())
    async with aiohttp.ClientSession(connector=connector) as http:
        with pytest.raises(aiohttp.ClientConnectorDNSError, match=NOT_ALLOWED):
            await fetch(http, f"http://localhost:{server.port}/")
    assert len(server.hits) == 1


async def test_literal_addresses_skip_the_resolver_so_check_is_needed(server: Server) -> None:
    # aiohttp connects to a literal address without asking the resolver: this is why the sender
    # must call check() before each request.
    stub = StubResolver(lambda host: [])
    policy = UrlPolicy(["10.0.0.0/8"])
    connector = aiohttp.TCPConnector(resolver=policy.resolver(stub))
    async with aiohttp.ClientSession(connector=connector) as http:
        url = f"http://127.0.0.1:{server.port}/"
        assert await fetch(http, url) == "reached"
    assert stub.asked == []
    with pytest.raises(WebhookUrlRefused, match=NOT_ALLOWED):
        policy.check(url)
