"""A Camunda 7 engine's ``POST /engine-rest/message`` on a loopback socket, strict as the real one.

Its checks and answers follow Camunda 7's REST layer (``MessageRestServiceImpl``,
``VariableValueDto.toTypedValue``, the JAX-RS exception handlers; Camunda 7 REST reference,
"Correlate a Message"):

- only ``application/json`` bodies (else 415); a body Jackson cannot read is a 400 whose
  ``type`` is the Jackson exception; unknown fields are ignored, as Camunda's ObjectMapper does
  (``FAIL_ON_UNKNOWN_PROPERTIES`` off), but kept in :attr:`Camunda7Double.unknown_fields` so a
  test can see that none were sent;
- 400 ``InvalidRequestException`` "No message name supplied"; ``tenantId`` with
  ``withoutTenantId``;
- every typed variable (``correlationKeys``, ``processVariables``, ...) converted as the engine
  converts it: the type name's first letter lower-cased must name a known type (``Json`` is
  known, ``JSON`` is not: "Unsupported value type"); a primitive value must be of the type or
  a text Jackson reads as one (``"5"`` is an Integer, ``"x"`` and ``3000000000`` are not:
  "Cannot convert value ..."); ``Json``, ``Xml`` and ``Object`` take ``null`` or a string
  ("Must provide 'null' or String value ..."), and only with the Spin plugin (``spin=False``: an
  engine without it, where ``Json`` is an unsupported type); each wrapped as "Cannot deliver
  message: ...";
- correlation as ``DefaultCorrelationHandler`` does it: first the instances a test made wait
  (:meth:`Camunda7Double.wait`) whose message name, business key, correlation keys (process
  variables) and tenant match; then, only if none does (or with ``all``, as well), the process
  definitions with a message start event of that name (:meth:`Camunda7Double.starts`; for the
  request's tenant, or without one with ``withoutTenantId``, or any tenant when neither is
  given; business key and correlation keys play no part), each starting a new instance with
  the business key. With ``all`` false exactly one must match, else 400 ``RestException`` with
  the ``MismatchingMessageCorrelationException`` text (nothing matches, "... to a single
  execution" when several wait, "... to a single process definition" when several start); with
  ``all`` true at least one. A correlated instance gets the ``processVariables`` and stops
  waiting.
- 200 with the correlation results when ``resultEnabled``, else 204: per result ``resultType``
  ``Execution`` with ``execution`` (``id``, ``processInstanceId``, ``ended``, ``tenantId``) and
  ``processInstance`` null, or ``ProcessDefinition`` with ``execution`` null and
  ``processInstance`` (``links``, ``id``, ``definitionId``, ``businessKey``, ``caseInstanceId``,
  ``ended``, ``suspended``, ``tenantId``); ``variables`` (the instance's, typed) only with
  ``variablesInResultEnabled``.

Error bodies are ``{"type", "message", "code"}`` as Camunda 7.24 sends them.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["Camunda7Double", "Correlation", "Instance", "StartEvent", "Typed"]

_STRING_FIELDS = ("messageName", "businessKey", "tenantId", "processInstanceId")
_BOOLEAN_FIELDS = ("all", "resultEnabled", "variablesInResultEnabled", "withoutTenantId")
_VARIABLE_MAPS = (
    "correlationKeys",
    "localCorrelationKeys",
    "processVariables",
    "processVariablesLocal",
    "processVariablesToTriggeredScope",
)
KNOWN_FIELDS = frozenset((*_STRING_FIELDS, *_BOOLEAN_FIELDS, *_VARIABLE_MAPS))
_JAVA_TYPES = {
    "boolean": "java.lang.Boolean",
    "short": "java.lang.Short",
    "integer": "java.lang.Integer",
    "long": "java.lang.Long",
    "double": "java.lang.Double",
    "string": "java.lang.String",
    "date": "java.util.Date",
    "number": "java.lang.Number",
    "bytes": "[B",
}
_SERIALIZABLE = ("json", "xml", "object")
_RANGES = {"short": 2**15, "integer": 2**31, "long": 2**63}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{4}$")
_INTEGER_TEXT = re.compile(r"^[+-]?\d+$")
_DOUBLE_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^(NaN|-?Infinity)$")


@dataclass(frozen=True)
class Typed:
    """A variable as the engine holds it: the converted value and its type's engine name."""

    value: Any
    type: str


@dataclass
class Correlation:
    """One message an instance got: the request's fields and its converted variables."""

    message_name: str
    business_key: str | None
    correlation_keys: dict[str, Typed]
    tenant_id: str | None
    variables: dict[str, Typed]
    body: dict[str, Any]


@dataclass(frozen=True)
class StartEvent:
    """A deployed process definition whose message start event is ``message_name``."""

    definition_id: str
    message_name: str
    tenant_id: str | None


@dataclass
class Instance:
    """A process instance waiting at a message catch event for ``message_name``, or one a
    message start event started (``started_by``; it waits for nothing)."""

    id: str
    execution_id: str
    message_name: str
    business_key: str | None
    tenant_id: str | None
    variables: dict[str, Typed]
    correlations: list[Correlation] = field(default_factory=list)
    started_by: StartEvent | None = None

    @property
    def waiting(self) -> bool:
        return not self.correlations

    @property
    def received(self) -> Correlation:
        """The message that reached it (the test fails here if none did)."""
        assert self.correlations, f"instance {self.id} got no message"
        return self.correlations[0]


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    answer: Any


class _Refused(Exception):
    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message


@dataclass
class Camunda7Double:
    """Start with :meth:`start`; ``url`` is the REST root (``.../engine-rest``)."""

    spin: bool = True
    """Whether the Spin plugin is installed (it brings the ``Json`` and ``Xml`` types)."""
    port: int = 0
    instances: list[Instance] = field(default_factory=list)
    start_events: list[StartEvent] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    unknown_fields: set[str] = field(default_factory=set)
    _failures: list[int] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/engine-rest"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/engine-rest/message", self._message)
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
        *,
        business_key: str | None = None,
        correlation_keys: dict[str, Any] | None = None,
        tenant_id: str | None = None,
    ) -> Instance:
        """A new instance waiting for ``message_name``; ``correlation_keys`` are process
        variables it holds (matched against a message's ``correlationKeys``)."""
        number = next(self._ids)
        variables = {
            name: Typed(value, _type_of(value)) for name, value in (correlation_keys or {}).items()
        }
        instance = Instance(
            id=f"pi-{number}",
            execution_id=f"ex-{number}",
            message_name=message_name,
            business_key=business_key,
            tenant_id=tenant_id,
            variables=variables,
        )
        self.instances.append(instance)
        return instance

    def starts(
        self, message_name: str, *, definition_key: str = "process", tenant_id: str | None = None
    ) -> StartEvent:
        """Deploy a process definition ``definition_key`` with a message start event for
        ``message_name``."""
        number = len(self.start_events) + 1
        start = StartEvent(f"{definition_key}:1:def-{number}", message_name, tenant_id)
        self.start_events.append(start)
        return start

    def started(self) -> list[Instance]:
        """The instances a message start event started, in order."""
        return [i for i in self.instances if i.started_by is not None]

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` message requests with ``status`` (a
        ``ProcessEngineException``, as a failing database gives)."""
        self._failures.extend([status] * count)

    @property
    def correlations(self) -> list[Correlation]:
        return [c for instance in self.instances for c in instance.correlations]

    def answered(self, status: int) -> list[Request]:
        return [r for r in self.requests if r.status == status]

    # -- the endpoint --------------------------------------------------------------------------

    async def _message(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            status, answer = self._handle(request, raw)
        except _Refused as refused:
            status = refused.status
            answer = {"type": refused.type, "message": refused.message, "code": 0}
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(Request(request.path, headers, raw, status, answer))
        if status == 204:
            return web.Response(status=204)
        return web.json_response(answer, status=status)

    def _handle(self, request: web.Request, raw: bytes) -> tuple[int, Any]:
        if request.content_type != "application/json":
            raise _Refused(415, "NotSupportedException", "HTTP 415 Unsupported Media Type")
        body = _read_json(raw)
        if not isinstance(body, dict):
            raise _Refused(
                400,
                "MismatchedInputException",
                "Cannot deserialize value of type `org.camunda.bpm.engine.rest.dto.message."
                "CorrelationMessageDto` from "
                f"{_json_kind(body)} value",
            )
        self.unknown_fields |= set(body) - KNOWN_FIELDS
        dto = _dto(body)
        if dto["messageName"] is None:
            raise _Refused(400, "InvalidRequestException", "No message name supplied")
        if dto["tenantId"] is not None and dto["withoutTenantId"]:
            raise _Refused(
                400,
                "InvalidRequestException",
                "Parameter 'tenantId' cannot be used together with parameter 'withoutTenantId'.",
            )
        try:
            converted = {
                name: {key: to_typed(value, self.spin) for key, value in (dto[name] or {}).items()}
                for name in _VARIABLE_MAPS
            }
        except _Refused as refused:
            raise _Refused(
                refused.status, "InvalidRequestException", f"Cannot deliver message: {refused}"
            ) from None
        if self._failures:
            status = self._failures.pop(0)
            raise _Refused(status, "ProcessEngineException", "the double was told to fail")
        matches = [i for i in self.instances if i.waiting and _matches(i, dto, converted)]
        starts = [s for s in self.start_events if _starts(s, dto)]
        name = dto["messageName"]
        if len(matches) > 1 and not dto["all"]:
            raise _Refused(
                400,
                "RestException",
                "org.camunda.bpm.engine.MismatchingMessageCorrelationException: ENGINE-13031 "
                f"Cannot correlate a message with name '{name}' to a single execution. "
                f"{len(matches)} executions match the correlation keys: "
                f"CorrelationSet [businessKey={dto['businessKey']}, processInstanceId="
                f"{dto['processInstanceId']}, correlationKeys={dto['correlationKeys']}]",
            )
        if matches and not dto["all"]:
            starts = []  # an execution that matches wins; start events are only looked at then
        if len(starts) > 1 and not dto["all"]:
            raise _Refused(
                400,
                "RestException",
                "org.camunda.bpm.engine.MismatchingMessageCorrelationException: ENGINE-13030 "
                f"Cannot correlate a message with name '{name}' to a single process definition. "
                f"{len(starts)} process definitions match the correlations keys: "
                f"CorrelationSet [businessKey={dto['businessKey']}, processInstanceId="
                f"{dto['processInstanceId']}, correlationKeys={dto['correlationKeys']}]",
            )
        if not matches and not starts:
            raise _Refused(
                400,
                "RestException",
                "org.camunda.bpm.engine.MismatchingMessageCorrelationException: Cannot correlate "
                f"message '{name}': No process definition or execution matches the parameters",
            )
        correlation = Correlation(
            message_name=name,
            business_key=dto["businessKey"],
            correlation_keys=converted["correlationKeys"],
            tenant_id=dto["tenantId"],
            variables=converted["processVariables"],
            body=body,
        )
        results: list[dict[str, Any]] = []
        reached: list[Instance] = []
        for instance in matches:
            reached.append(instance)
            instance.correlations.append(correlation)
            instance.variables.update(converted["processVariables"])
            results.append(
                {
                    "resultType": "Execution",
                    "execution": {
                        "id": instance.execution_id,
                        "processInstanceId": instance.id,
                        "ended": False,
                        "tenantId": instance.tenant_id,
                    },
                    "processInstance": None,
                }
            )
        for start in starts:
            number = next(self._ids)
            instance = Instance(
                id=f"pi-{number}",
                execution_id=f"ex-{number}",
                message_name=name,
                business_key=dto["businessKey"],
                tenant_id=start.tenant_id,
                variables=dict(converted["processVariables"]),
                correlations=[correlation],
                started_by=start,
            )
            self.instances.append(instance)
            reached.append(instance)
            results.append(
                {
                    "resultType": "ProcessDefinition",
                    "execution": None,
                    "processInstance": {
                        "links": [],
                        "id": instance.id,
                        "definitionId": start.definition_id,
                        "businessKey": instance.business_key,
                        "caseInstanceId": None,
                        "ended": False,
                        "suspended": False,
                        "tenantId": instance.tenant_id,
                    },
                }
            )
        if dto["variablesInResultEnabled"]:
            for result, instance in zip(results, reached, strict=True):
                result["variables"] = {
                    name: {"type": _rest_type(typed.type), "value": typed.value, "valueInfo": {}}
                    for name, typed in instance.variables.items()
                }
        if dto["resultEnabled"]:
            return 200, results
        return 204, None


def _starts(start: StartEvent, dto: dict[str, Any]) -> bool:
    """Whether ``start`` takes the message (``findMessageStartEventSubscriptions``): its name,
    and the tenant when the request names one or asks for none."""
    tenant: str | None = dto["tenantId"]
    without_tenant: bool = dto["withoutTenantId"]
    if start.message_name != dto["messageName"]:
        return False
    if tenant is not None:
        return start.tenant_id == tenant
    return not without_tenant or start.tenant_id is None


def _rest_type(engine_type: str) -> str:
    """An engine type name as the REST API writes it (``string`` → ``String``)."""
    return engine_type[:1].upper() + engine_type[1:]


def _matches(instance: Instance, dto: dict[str, Any], converted: dict[str, Any]) -> bool:
    if instance.message_name != dto["messageName"]:
        return False
    if dto["businessKey"] is not None and instance.business_key != dto["businessKey"]:
        return False
    if dto["processInstanceId"] is not None and instance.id != dto["processInstanceId"]:
        return False
    if dto["tenantId"] is not None and instance.tenant_id != dto["tenantId"]:
        return False
    if dto["withoutTenantId"] and instance.tenant_id is not None:
        return False
    for name, wanted in converted["correlationKeys"].items():
        held = instance.variables.get(name)
        if held is None or held.value != wanted.value:
            return False
    return True


# -- what Jackson and the engine read ---------------------------------------------------------


def _read_json(raw: bytes) -> Any:
    if not raw.strip():
        raise _Refused(400, "MismatchedInputException", "No content to map due to end-of-input")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _Refused(400, "JsonParseException", f"Unexpected character: {exc}") from None


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int | float):
        return "Number"
    return "Null"


def _dto(body: dict[str, Any]) -> dict[str, Any]:
    """The body as Jackson maps it onto ``CorrelationMessageDto`` (scalar coercion included)."""
    dto: dict[str, Any] = {}
    for name in _STRING_FIELDS:
        value = body.get(name)
        if isinstance(value, dict | list):
            raise _Refused(
                400,
                "MismatchedInputException",
                f"Cannot deserialize value of type `java.lang.String` from {_json_kind(value)} "
                f'value (through reference chain: CorrelationMessageDto["{name}"])',
            )
        dto[name] = None if value is None else _java_string(value)
    for name in _BOOLEAN_FIELDS:
        value = body.get(name)
        if value is None or isinstance(value, bool):
            dto[name] = bool(value)
        elif value in ("true", "false"):
            dto[name] = value == "true"
        else:
            raise _Refused(
                400,
                "InvalidFormatException",
                f"Cannot deserialize value of type `boolean` from {_json_kind(value)} "
                f'{json.dumps(value)} (through reference chain: CorrelationMessageDto["{name}"])',
            )
    for name in _VARIABLE_MAPS:
        value = body.get(name)
        if value is not None and not isinstance(value, dict):
            raise _Refused(
                400,
                "MismatchedInputException",
                f"Cannot deserialize value of type `java.util.HashMap` from {_json_kind(value)} "
                f'value (through reference chain: CorrelationMessageDto["{name}"])',
            )
        for key, variable in (value or {}).items():
            if not isinstance(variable, dict):
                raise _Refused(
                    400,
                    "MismatchedInputException",
                    "Cannot construct instance of `org.camunda.bpm.engine.rest.dto."
                    f"VariableValueDto` from {_json_kind(variable)} value (through reference "
                    f'chain: CorrelationMessageDto["{name}"]->java.util.HashMap["{key}"])',
                )
            if isinstance(variable.get("type"), dict | list) or not isinstance(
                variable.get("valueInfo", {}), dict | type(None)
            ):
                raise _Refused(
                    400,
                    "MismatchedInputException",
                    f"Cannot deserialize VariableValueDto (through reference chain: "
                    f'CorrelationMessageDto["{name}"]->java.util.HashMap["{key}"])',
                )
        dto[name] = value
    return dto


def to_typed(variable: dict[str, Any], spin: bool = True) -> Typed:
    """``{"value", "type"}`` as ``VariableValueDto.toTypedValue`` converts it; _Refused as the
    engine refuses it."""
    value = variable.get("value")
    rest_type = variable.get("type")
    if rest_type is None:
        return Typed(value, _type_of(value))
    rest_type = _java_string(rest_type)
    engine_type = rest_type[:1].lower() + rest_type[1:]
    if engine_type == "null":
        if value is not None:
            raise _Refused(400, "", f"Cannot convert value '{_java_string(value)}' of type 'Null'")
        return Typed(None, "null")
    if engine_type in _SERIALIZABLE and (spin or engine_type == "object"):
        if value is not None and not isinstance(value, str):
            raise _Refused(
                400,
                "",
                "Must provide 'null' or String value for value of SerializableValue type "
                f"'{rest_type}'.",
            )
        if engine_type == "json" and value is not None:
            try:
                return Typed(json.loads(value), "json")
            except ValueError:
                raise _Refused(
                    400, "", f"Cannot convert value '{value}' of type '{rest_type}' to JSON"
                ) from None
        return Typed(value, engine_type)
    if engine_type == "file":
        return Typed(value, "file")
    java_type = _JAVA_TYPES.get(engine_type)
    if java_type is None:
        raise _Refused(400, "", f"Unsupported value type '{rest_type}'")
    if value is None:
        return Typed(None, engine_type)
    converted = _primitive(value, engine_type)
    if converted is _FAILED:
        raise _Refused(
            400,
            "",
            f"Cannot convert value '{_java_string(value)}' of type '{rest_type}' to java type "
            f"{java_type}",
        )
    return Typed(converted, engine_type)


_FAILED = object()


def _primitive(value: Any, engine_type: str) -> Any:
    """The value as the Java type, the way the engine gets it: as is when Jackson already
    read it as that type, else Jackson reading ``"<value>"`` as that type."""
    if engine_type == "string":
        return value if isinstance(value, str) else _java_string(value)
    if engine_type == "boolean":
        if isinstance(value, bool):
            return value
        text = _java_string(value)
        return {"true": True, "false": False}.get(text, _FAILED)
    if isinstance(value, bool) or isinstance(value, dict | list):
        return _FAILED
    text = _java_string(value)
    if engine_type in _RANGES:
        limit = _RANGES[engine_type]
        if isinstance(value, int) and engine_type == "integer" and -limit <= value < limit:
            return value
        if not _INTEGER_TEXT.match(text):
            return _FAILED
        number = int(text)
        return number if -limit <= number < limit else _FAILED
    if engine_type in ("double", "number"):
        if isinstance(value, float) or (engine_type == "number" and isinstance(value, int)):
            return value
        return float(text) if _DOUBLE_TEXT.match(text) else _FAILED
    if engine_type == "date":
        return text if _DATE.match(text) else _FAILED
    return value  # bytes: base64 text


def _java_string(value: Any) -> str:
    """``String.valueOf`` of what Jackson read (enough for scalars)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    return str(value)


def _type_of(value: Any) -> str:
    """The type the engine infers for an untyped Java value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    return "object"
