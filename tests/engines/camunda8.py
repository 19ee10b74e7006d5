"""A Camunda 8 (Zeebe) gateway's message routes on a loopback socket: ``POST
/v2/messages/publication`` and ``POST /v2/messages/correlation``.

Its checks and answers follow the Camunda 8 REST API ("Publish a message",
``MessagePublicationRequest``; "Correlate a message", ``MessageCorrelationRequest``) and the
gateway and engine code behind it (``GlobalControllerExceptionHandler``,
``MultiTenancyValidator``, ``MessageRequestValidator``, ``RequestMapper``, ``RestErrorMapper``,
``MessagePublishProcessor``, ``MessageCorrelationCorrelateProcessor``). Every error is an RFC 9457
problem (``application/problem+json``: ``type``, ``title``, ``status``, ``detail``,
``instance``):

- with :attr:`Camunda8Double.bearer_tokens` set, no accepted ``Authorization: Bearer`` → 401;
- only JSON bodies (else 415 "Content-Type '…' is not supported."); an unreadable body → 400
  "Failed to read request" / "Required request body is missing"; a field of the wrong JSON type
  → 400 "Request property [x] cannot be parsed". Unknown fields are ignored, as the gateway's
  Jackson does, but kept in :attr:`Camunda8Double.unknown_fields` for the test to look at (the
  correlation takes no ``timeToLive`` and no ``messageId``: sent there, they land in it);
- the tenant as the gateway checks it, before the name: without multi-tenancy only none or
  ``<default>``; with it one is required, at most 31 characters of ``[\\w.-]`` (400
  ``INVALID_ARGUMENT``, "Expected to handle request Publish Message …" or "… Correlate Message
  …");
- a blank ``name``: "No name provided." for a publication, "No messageName provided." for a
  correlation (the validator names the field so; 400 ``INVALID_ARGUMENT``);
- back-pressure on request (:meth:`Camunda8Double.overload`), for either route: 503
  ``RESOURCE_EXHAUSTED``.

A published message is buffered for ``timeToLive`` ms and correlated, as Zeebe does, to each
waiting instance whose message name, correlation key and tenant match, at most one instance per
process, at once or when an instance starts waiting (:meth:`Camunda8Double.wait`) before the
message expires; it also starts an instance of each process with a matching message start event
(:meth:`Camunda8Double.starts`) that it did not reach otherwise, at publication only. While a
message with the same name, correlation key, ``messageId`` and tenant is buffered, a publication
is 409 ``ALREADY_EXISTS`` ("Expected to publish a new message with id '…', but a message with
that id was already published"). 200 ``{"messageKey", "tenantId"}`` (keys as strings, as 8.8
sends them).

A correlated message reaches what waits and what it starts the same way, but only at once: it is
never buffered (Zeebe gives it no time to live), and is kept in
:attr:`Camunda8Double.correlated`, not in ``published``. 200 ``{"messageKey", "tenantId",
"processInstanceKey"}``, the key of the instance a start event started, else of the first waiting
instance it reached; when it reaches nothing, 404 ``NOT_FOUND`` "Command 'CORRELATE' rejected
with code 'NOT_FOUND': Expected to find subscription for message with name '…' and correlation
key '…', but none was found."

Not modelled: Zeebe's "one active instance per correlation key" rule for message start events
(instances here never end), ``businessId`` uniqueness, authorizations.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["DEFAULT_TENANT", "Camunda8Double", "Instance", "Published", "StartEvent"]

DEFAULT_TENANT = "<default>"
PATH = "/v2/messages/publication"
CORRELATION_PATH = "/v2/messages/correlation"
KNOWN_FIELDS = frozenset(
    ("name", "correlationKey", "timeToLive", "messageId", "variables", "tenantId", "businessId")
)
CORRELATION_FIELDS = frozenset(("name", "correlationKey", "variables", "tenantId", "businessId"))
_TENANT = re.compile(r"^[\w.-]{1,31}$")
_LONG_TEXT = re.compile(r"^[+-]?\d+$")


@dataclass
class Published:
    """A message the engine accepted (published, or correlated: then never buffered)."""

    key: str
    name: str
    correlation_key: str
    time_to_live: int
    message_id: str
    variables: dict[str, Any]
    tenant_id: str
    deadline: float
    """``time.monotonic()`` when it leaves the buffer."""
    body: dict[str, Any]
    correlated_processes: set[str] = field(default_factory=set)

    def buffered(self, now: float) -> bool:
        return now < self.deadline


@dataclass(frozen=True)
class StartEvent:
    """A deployed process ``process_id`` whose message start event is ``message_name``."""

    process_id: str
    message_name: str
    tenant_id: str


@dataclass
class Instance:
    """A process instance whose message catch event subscribes to ``(name, correlation_key)``,
    or one a message start event started (``started_by``; it waits for nothing)."""

    key: str
    process_id: str
    message_name: str
    correlation_key: str
    tenant_id: str
    messages: list[Published] = field(default_factory=list)
    started_by: StartEvent | None = None

    @property
    def waiting(self) -> bool:
        return not self.messages

    @property
    def received(self) -> Published:
        """The message correlated to it (the test fails here if none was)."""
        assert self.messages, f"instance {self.key} got no message"
        return self.messages[0]


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    answer: Any


class _Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, **headers: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.headers = status, title, detail, headers


@dataclass
class Camunda8Double:
    """Start with :meth:`start`; ``url`` is the REST root (the format adds ``/v2/...``)."""

    multi_tenancy: bool = False
    bearer_tokens: set[str] | None = None
    """When set, the tokens a request must carry as ``Authorization: Bearer``."""
    port: int = 0
    published: list[Published] = field(default_factory=list)
    correlated: list[Published] = field(default_factory=list)
    """The messages ``/v2/messages/correlation`` took (found something), in order."""
    instances: list[Instance] = field(default_factory=list)
    start_events: list[StartEvent] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    unknown_fields: set[str] = field(default_factory=set)
    _overloads: list[tuple[int, str | None]] = field(default_factory=list)
    _keys: itertools.count[int] = field(default_factory=lambda: itertools.count(2251799813685249))
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(PATH, self._publish)
        app.router.add_post(CORRELATION_PATH, self._correlate)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- what a test sets up and looks at ---------------------------------------------------

    def wait(
        self,
        message_name: str,
        correlation_key: str,
        *,
        tenant_id: str = DEFAULT_TENANT,
        process_id: str = "process",
    ) -> Instance:
        """A new instance of ``process_id`` waiting for the message; a buffered one that
        matches is correlated to it at once."""
        instance = Instance(
            key=str(next(self._keys)),
            process_id=process_id,
            message_name=message_name,
            correlation_key=correlation_key,
            tenant_id=tenant_id,
        )
        self.instances.append(instance)
        now = time.monotonic()
        for message in self.published:
            if message.buffered(now) and _fits(instance, message):
                _correlate(instance, message)
                break
        return instance

    def starts(
        self, message_name: str, *, tenant_id: str = DEFAULT_TENANT, process_id: str = "process"
    ) -> StartEvent:
        """Deploy ``process_id`` with a message start event for ``message_name``: a message
        that reaches no instance of it starts one (and the new instance waits for nothing)."""
        start = StartEvent(process_id, message_name, tenant_id)
        self.start_events.append(start)
        return start

    def started(self, process_id: str = "process") -> list[Instance]:
        """The instances of ``process_id`` a message start event started."""
        return [i for i in self.instances if i.process_id == process_id and i.started_by]

    def overload(self, count: int, *, status: int = 503, retry_after: str | None = None) -> None:
        """Answer the next ``count`` valid requests (publications or correlations) with
        back-pressure."""
        self._overloads.extend([(status, retry_after)] * count)

    def answered(self, status: int) -> list[Request]:
        return [r for r in self.requests if r.status == status]

    # -- the endpoint --------------------------------------------------------------------------

    async def _publish(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self._handle)

    async def _correlate(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self._handle_correlation)

    async def _answer(
        self, request: web.Request, handle: Callable[[web.Request, bytes], dict[str, Any]]
    ) -> web.StreamResponse:
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            answer: dict[str, Any] = handle(request, raw)
            status = 200
            response = web.json_response(answer)
        except _Problem as problem:
            status = problem.status
            answer = {
                "type": "about:blank",
                "title": problem.title,
                "status": problem.status,
                "detail": problem.detail,
                "instance": request.path,
            }
            response = web.Response(
                status=status,
                text=json.dumps(answer),
                content_type="application/problem+json",
                headers=problem.headers,
            )
        self.requests.append(Request(request.path, headers, raw, status, answer))
        return response

    def _body(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        """The JSON object of a request, as the gateway's security and Spring MVC let it in."""
        if self.bearer_tokens is not None:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if token not in self.bearer_tokens:
                raise _Problem(401, "Unauthorized", "Full authentication is required")
        if request.content_type != "application/json" and not (
            request.content_type.startswith("application/")
            and request.content_type.endswith("+json")
        ):
            raise _Problem(
                415,
                "Unsupported Media Type",
                f"Content-Type '{request.content_type}' is not supported.",
            )
        if not raw.strip():
            raise _Problem(400, "Bad Request", "Required request body is missing")
        try:
            body = json.loads(raw)
        except ValueError:
            raise _Problem(400, "Bad Request", "Failed to read request") from None
        if not isinstance(body, dict):
            raise _Problem(400, "Bad Request", "Failed to read request")
        return body

    def _back_pressure(self) -> None:
        if self._overloads:
            status, retry_after = self._overloads.pop(0)
            headers = {} if retry_after is None else {"Retry-After": retry_after}
            raise _Problem(
                status,
                "RESOURCE_EXHAUSTED",
                "Expected to handle REST API request, but the broker is overloaded: Reached "
                "maximum capacity of requests handled",
                **headers,
            )

    def _handle(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        body = self._body(request, raw)
        self.unknown_fields |= set(body) - KNOWN_FIELDS
        name = _string(body, "name")
        correlation_key = _string(body, "correlationKey") or ""
        message_id = _string(body, "messageId") or ""
        tenant = _string(body, "tenantId")
        _string(body, "businessId")
        time_to_live = _long(body, "timeToLive")
        variables = body.get("variables")
        if variables is not None and not isinstance(variables, dict):
            raise _Problem(400, "Bad Request", "Request property [variables] cannot be parsed")
        tenant_id = self._tenant(tenant, "Publish Message")
        violations = []
        if name is None or not name.strip():
            violations.append("No name provided")
        if "timeToLive" in body and time_to_live is None:
            violations.append("No timeToLive provided")
        if violations:
            raise _Problem(400, "INVALID_ARGUMENT", ". ".join(violations) + ".")
        assert name is not None
        self._back_pressure()
        now = time.monotonic()
        if message_id and any(
            m.buffered(now)
            and (m.name, m.correlation_key, m.message_id, m.tenant_id)
            == (name, correlation_key, message_id, tenant_id)
            for m in self.published
        ):
            raise _Problem(
                409,
                "ALREADY_EXISTS",
                "Command 'PUBLISH' rejected with code 'ALREADY_EXISTS': Expected to publish a "
                f"new message with id '{message_id}', but a message with that id was already "
                "published",
            )
        ttl = time_to_live or 0
        message = Published(
            key=str(next(self._keys)),
            name=name,
            correlation_key=correlation_key,
            time_to_live=ttl,
            message_id=message_id,
            variables=dict(variables or {}),
            tenant_id=tenant_id,
            deadline=now + max(ttl, 0) / 1000,
            body=body,
        )
        self.published.append(message)
        self._reach(message)
        return {"messageKey": message.key, "tenantId": tenant_id}

    def _handle_correlation(self, request: web.Request, raw: bytes) -> dict[str, Any]:
        body = self._body(request, raw)
        self.unknown_fields |= set(body) - CORRELATION_FIELDS
        name = _string(body, "name")
        correlation_key = _string(body, "correlationKey") or ""
        tenant = _string(body, "tenantId")
        _string(body, "businessId")
        variables = body.get("variables")
        if variables is not None and not isinstance(variables, dict):
            raise _Problem(400, "Bad Request", "Request property [variables] cannot be parsed")
        tenant_id = self._tenant(tenant, "Correlate Message")
        if name is None or not name.strip():
            raise _Problem(400, "INVALID_ARGUMENT", "No messageName provided.")
        self._back_pressure()
        message = Published(
            key=str(next(self._keys)),
            name=name,
            correlation_key=correlation_key,
            time_to_live=-1,
            message_id="",
            variables=dict(variables or {}),
            tenant_id=tenant_id,
            deadline=float("-inf"),
            body=body,
        )
        waiting, started = self._reach(message)
        if not waiting and not started:
            raise _Problem(
                404,
                "NOT_FOUND",
                "Command 'CORRELATE' rejected with code 'NOT_FOUND': Expected to find "
                f"subscription for message with name '{name}' and correlation key "
                f"'{correlation_key}', but none was found.",
            )
        self.correlated.append(message)
        first = (started or waiting)[0]
        return {"messageKey": message.key, "tenantId": tenant_id, "processInstanceKey": first.key}

    def _reach(self, message: Published) -> tuple[list[Instance], list[Instance]]:
        """Correlate ``message`` now, as Zeebe does: to what waits for it (one instance per
        process), then to the message start events of the processes it did not reach."""
        waiting = []
        for instance in self.instances:
            if _fits(instance, message):
                _correlate(instance, message)
                waiting.append(instance)
        started = []
        for start in self.start_events:
            if (
                start.message_name == message.name
                and start.tenant_id == message.tenant_id
                and start.process_id not in message.correlated_processes
            ):
                instance = Instance(
                    key=str(next(self._keys)),
                    process_id=start.process_id,
                    message_name=message.name,
                    correlation_key=message.correlation_key,
                    tenant_id=message.tenant_id,
                    started_by=start,
                )
                self.instances.append(instance)
                _correlate(instance, message)
                started.append(instance)
        return waiting, started

    def _tenant(self, tenant: str | None, command: str) -> str:
        """The tenant as ``MultiTenancyValidator.validateTenantId`` checks it for ``command``."""
        if tenant is None or not tenant.strip():
            if not self.multi_tenancy:
                return DEFAULT_TENANT
            why = "no tenant identifier was provided"
        elif not self.multi_tenancy:
            if tenant == DEFAULT_TENANT:
                return tenant
            why = "multi-tenancy is disabled"  # the one detail without a full stop
        elif len(tenant) > 31:
            why = "tenant identifier is longer than 31 characters"
        elif tenant != DEFAULT_TENANT and not _TENANT.match(tenant):
            why = "tenant identifier contains illegal characters"
        else:
            return tenant
        raise _Problem(
            400,
            "INVALID_ARGUMENT",
            f"Expected to handle request {command} with tenant identifier "
            f"'{'null' if tenant is None else tenant}', "
            f"but {why}" + ("" if why.startswith("multi") else "."),
        )


def _fits(instance: Instance, message: Published) -> bool:
    return (
        instance.waiting
        and instance.message_name == message.name
        and instance.correlation_key == message.correlation_key
        and instance.tenant_id == message.tenant_id
        and instance.process_id not in message.correlated_processes
    )


def _correlate(instance: Instance, message: Published) -> None:
    instance.messages.append(message)
    message.correlated_processes.add(instance.process_id)


def _string(body: dict[str, Any], name: str) -> str | None:
    """A string property as Jackson reads it: scalars are coerced, objects and arrays are not."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, dict | list):
        raise _Problem(400, "Bad Request", f"Request property [{name}] cannot be parsed")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _long(body: dict[str, Any], name: str) -> int | None:
    """An int64 property as Jackson reads it: numbers (fractions cut) and integral text."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or isinstance(value, dict | list):
        raise _Problem(400, "Bad Request", f"Request property [{name}] cannot be parsed")
    if isinstance(value, float):
        value = int(value)
    if isinstance(value, str):
        if not _LONG_TEXT.match(value.strip()):
            raise _Problem(400, "Bad Request", f"Request property [{name}] cannot be parsed")
        value = int(value)
    if not -(2**63) <= value < 2**63:
        raise _Problem(400, "Bad Request", f"Request property [{name}] cannot be parsed")
    return int(value)
