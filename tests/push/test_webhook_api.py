"""``/api/v1/webhooks`` as an operator uses it: every refusal is a clear problem, never a 500.

Also: a webhook on PostgreSQL, and auth (basic, and OAuth2 client credentials against a real
token endpoint) arriving at the receiver.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Api, ConnectorFactory
from tests.e2e.helpers import eventually
from tests.push.receiver import Receiver
from tests.push.test_webhooks import send_many, subscribe


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    await hook.start()
    yield hook
    await hook.stop()


async def _post(api: Api, body: Any) -> tuple[int, Any]:
    return await api.json("POST", "/api/v1/webhooks", json=body)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://0xa9fea9fe/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fe80::1]/hook",
    ],
)
async def test_urls_aimed_at_metadata_or_link_local_are_refused(
    connector_factory: ConnectorFactory, url: str
) -> None:
    bob = await connector_factory("bob")
    code, problem = await _post(bob, {"url": url})
    assert code == 422, problem
    assert problem["code"] == "webhook_url_refused"
    assert problem["errors"][0]["field"] == "url"
    _, listed = await bob.json("GET", "/api/v1/webhooks")
    assert listed["items"] == []


async def test_loopback_and_its_names_are_accepted(connector_factory: ConnectorFactory) -> None:
    """Receivers on this machine or in the intranet are allowed (names that resolve to
    refused addresses are tested with a stub resolver in tests/push/test_url_policy.py)."""
    bob = await connector_factory("bob")
    code, body = await _post(bob, {"url": "http://localhost:9/hook"})
    assert code == 201, body


async def test_allowed_hosts_narrows_where_webhooks_may_point(
    connector_factory: ConnectorFactory,
) -> None:
    bob = await connector_factory("bob", delivery={"allowed_hosts": ["*.example.com"]})
    code, problem = await _post(bob, {"url": "http://127.0.0.1:9/hook"})
    assert code == 422 and problem["code"] == "webhook_url_refused"
    assert "allowed_hosts" in problem["detail"]
    code, body = await _post(bob, {"url": "https://hooks.example.com/in"})
    assert code == 201, body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "url"),
        ({"url": "ftp://127.0.0.1/x"}, "url"),
        ({"url": "http://127.0.0.1:9/", "events": []}, "events"),
        ({"url": "http://127.0.0.1:9/", "events": ["message.exploded"]}, "events"),
        ({"url": "http://127.0.0.1:9/", "format": "soap"}, "format"),
        ({"url": "http://127.0.0.1:9/", "filter": {"colour": "red"}}, "filter"),
        ({"url": "http://127.0.0.1:9/", "headers": {"webhook-id": "x"}}, "headers"),
        ({"url": "http://127.0.0.1:9/", "headers": {"X-A": "a\r\nX-B: b"}}, "headers"),
        ({"url": "http://127.0.0.1:9/", "secret": "whsec_not*base64"}, "secret"),
        ({"url": "http://127.0.0.1:9/", "auth": {"type": "digest"}}, "auth"),
        ({"url": "http://127.0.0.1:9/", "auth": {"type": "basic", "username": "u"}}, "auth"),
        ({"url": "http://127.0.0.1:9/", "surprise": True}, "surprise"),
    ],
)
async def test_bad_subscriptions_are_refused_naming_the_field(
    connector_factory: ConnectorFactory, body: dict[str, Any], field: str
) -> None:
    bob = await connector_factory("bob")
    code, problem = await _post(bob, body)
    assert code in (400, 422), problem
    assert problem["code"] == "validation_failed"
    assert any(e["field"].split(".")[0] == field for e in problem["errors"]), problem
    assert "s3cret" not in str(problem)


async def test_secrets_are_shown_once_and_auth_only_by_its_type(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    bob = await connector_factory("bob")
    auth = {"type": "basic", "username": "bob", "password": "s3cret-pw"}
    hook = await subscribe(bob, receiver.url, auth=auth)
    receiver.secret = hook["secret"]
    assert hook["auth"] == {"type": "basic"}
    code, shown = await bob.json("GET", f"/api/v1/webhooks/{hook['id']}")
    assert code == 200 and "secret" not in shown and "s3cret-pw" not in str(shown)
    code, listed = await bob.json("GET", "/api/v1/webhooks")
    assert "s3cret-pw" not in str(listed) and hook["secret"] not in str(listed)
    # the stored row holds neither in clear
    async with bob.runtime.sessions() as session:
        from sqlalchemy import text

        row = (await session.execute(text("SELECT * FROM webhooks"))).one()
    assert b"s3cret-pw" not in b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row)
    # the test route sends with the auth
    code, result = await bob.json("POST", f"/api/v1/webhooks/{hook['id']}/test")
    assert code == 200 and result["delivered"], result
    expected = "Basic " + base64.b64encode(b"bob:s3cret-pw").decode()
    assert receiver.accepted[0].headers["authorization"] == expected


async def test_patch_delete_and_their_refusals(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    bob = await connector_factory("bob", webhooks=[{"url": receiver.url + "?from=config"}])
    hook = await subscribe(bob, receiver.url)
    code, changed = await bob.json(
        "PATCH",
        f"/api/v1/webhooks/{hook['id']}",
        json={"enabled": False, "events": ["message.sent"], "filter": {"name": "x"}},
    )
    assert code == 200, changed
    assert changed["enabled"] is False and changed["events"] == ["message.sent"]
    assert changed["filter"]["name"] == "x"
    code, problem = await bob.json(
        "PATCH", f"/api/v1/webhooks/{hook['id']}", json={"url": "http://169.254.169.254/"}
    )
    assert code == 422 and problem["code"] == "webhook_url_refused"

    _, listed = await bob.json("GET", "/api/v1/webhooks")
    config_id = next(w["id"] for w in listed["items"] if w["source"] == "config")
    code, problem = await bob.json(
        "PATCH", f"/api/v1/webhooks/{config_id}", json={"enabled": False}
    )
    assert code == 409 and problem["code"] == "webhook_from_config"

    code, _ = await bob.json("DELETE", f"/api/v1/webhooks/{hook['id']}")
    assert code == 204
    for method in ("GET", "DELETE"):
        code, problem = await bob.json(method, f"/api/v1/webhooks/{hook['id']}")
        assert code == 404 and problem["code"] == "not_found"
    code, problem = await bob.json(
        "POST", f"/api/v1/webhooks/{config_id}/deliveries/DLV00000000000000000/retry"
    )
    assert code == 404 and problem["code"] == "not_found"
    code, problem = await bob.json("GET", "/api/v1/webhooks/not-an-id")
    assert code == 404


READ = "messages:read"


async def test_the_scope_webhooks_admin_is_needed(connector_factory: ConnectorFactory) -> None:
    bob = await connector_factory(
        "bob",
        api={
            "keys": [
                {
                    "name": "reader",
                    "key": "reader-key-0123456789abcdef",
                    "scopes": ["messages:read"],
                }
            ]
        },
    )
    headers = {"X-API-KEY": "reader-key-0123456789abcdef"}
    async with bob.http.get(bob.url + "/api/v1/webhooks", headers=headers) as response:
        assert response.status == 403
        assert (await response.json())["code"] == "forbidden"
    async with bob.http.get(bob.url + "/api/v1/webhooks") as response:
        assert response.status == 401


async def test_deliveries_page_with_a_cursor(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    alice, bob = await connector_factory("alice"), await connector_factory("bob")
    hook = await subscribe(bob, receiver.url)
    await send_many(alice, bob, 5)
    await eventually(lambda: _accepted(receiver, 5), "five pushes")
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        code, page = await bob.json("GET", f"/api/v1/webhooks/{hook['id']}/deliveries{query}")
        assert code == 200, page
        seen += [d["id"] for d in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 5
    code, problem = await bob.json("GET", f"/api/v1/webhooks/{hook['id']}/deliveries?cursor=s1")
    assert code == 400 and problem["code"] == "validation_failed"


async def test_oauth2_client_credentials_reach_the_endpoint(
    connector_factory: ConnectorFactory, receiver: Receiver
) -> None:
    tokens_issued = 0

    async def token(request: web.Request) -> web.Response:
        nonlocal tokens_issued
        form = await request.post()
        if (form.get("client_id"), form.get("client_secret")) != ("bob-app", "app-s3cret"):
            return web.json_response({"error": "invalid_client"}, status=401)
        tokens_issued += 1
        return web.json_response(
            {"access_token": f"tok-{tokens_issued}", "token_type": "Bearer", "expires_in": 600}
        )

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        alice, bob = await connector_factory("alice"), await connector_factory("bob")
        auth = {
            "type": "oauth2",
            "tokenUrl": f"http://127.0.0.1:{port}/oauth/token",
            "clientId": "bob-app",
            "clientSecret": "app-s3cret",
        }
        await subscribe(bob, receiver.url, auth=auth)
        await send_many(alice, bob, 4)
        await eventually(lambda: _accepted(receiver, 4), "four pushes with a token")
        assert {r.headers["authorization"] for r in receiver.accepted} == {"Bearer tok-1"}
        assert tokens_issued == 1  # cached
    finally:
        await runner.cleanup()


async def test_a_webhook_on_postgresql(
    connector_factory: ConnectorFactory, receiver: Receiver, postgres_url: str
) -> None:
    alice = await connector_factory("alice")
    bob = await connector_factory("bob-pg", database={"url": postgres_url})
    hook = await subscribe(bob, receiver.url)
    receiver.secret = hook["secret"]
    sent = await send_many(alice, bob, 20)
    await eventually(lambda: _accepted(receiver, 20), "twenty pushes from PostgreSQL")
    assert sorted(r.json["data"]["id"] for r in receiver.accepted) == sorted(sent)


async def _accepted(receiver: Receiver, n: int) -> bool:
    return len({r.webhook_id for r in receiver.accepted}) >= n


async def test_a_config_webhook_aimed_at_metadata_stops_start_up(
    connector_factory: ConnectorFactory,
) -> None:
    from connector.settings import ConfigError

    with pytest.raises(ConfigError, match=r"webhooks\[0\]\.url: .*metadata"):
        await connector_factory("bob", webhooks=[{"url": "http://169.254.169.254/latest"}])
