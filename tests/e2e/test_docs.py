"""OpenAPI document, Swagger UI and metrics, as a user sees them."""

from __future__ import annotations

from openapi_spec_validator import validate

from connector.api.app import route_specs
from tests.conftest import Api


async def test_openapi_is_valid_and_complete(alice: Api) -> None:
    status, document = await alice.json("GET", "/api/v1/openapi.json")
    assert status == 200
    validate(document)  # raises on an invalid OpenAPI 3.1 document
    assert document["openapi"] == "3.1.0"
    paths = document["paths"]
    for route in route_specs():
        assert route.method.lower() in paths[route.path], route.path
    send = paths["/api/v1/messages"]["post"]
    assert send["security"] == [{"apiKey": []}] and send["x-scope"] == "messages:write"
    schema = send["requestBody"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("SendMessageRequest")
    request_schema = document["components"]["schemas"]["SendMessageRequest"]
    assert "correlationKey" in request_schema["properties"]
    assert "security" not in paths["/health"]["get"]
    headers = {p["name"] for p in send["parameters"] if p["in"] == "header"}
    assert headers == {"Idempotency-Key", "Prefer"}
    assert {p["name"] for p in paths["/api/v1/messages"]["get"]["parameters"]} >= {
        "direction",
        "correlationKey",
        "createdAfter",
        "cursor",
        "limit",
    }


async def test_openapi_needs_a_key_and_docs_page_does_not(alice: Api) -> None:
    async with alice.http.get(alice.url + "/api/v1/openapi.json") as response:
        assert response.status == 401
    async with alice.http.get(alice.url + "/api/docs") as response:
        assert response.status == 200
        assert "swagger-ui" in await response.text()


async def test_metrics(alice: Api, bob: Api) -> None:
    status, _ = await alice.send(recipients=[bob.address], content={"m": 1})
    assert status == 201
    async with alice.http.get(alice.url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert 'connector_messages{direction="outgoing",status="sent"} 1' in text or (
        'connector_messages{direction="outgoing",status="delivered"} 1' in text
    )
    assert "connector_outbox_pending 0" in text
