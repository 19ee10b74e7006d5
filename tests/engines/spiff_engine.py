"""A real SpiffWorkflow engine behind SpiffArena's Messages API, on a loopback socket.

The processes are the ``spiffworkflow`` package's own: BPMN parsed by ``SpiffBpmnParser`` (the
Spiff-flavoured BPMN SpiffArena's modeler writes), run as ``BpmnWorkflow``s, kept serialized
between requests with ``BpmnWorkflowSerializer`` as SpiffArena keeps them in its database. A
message reaches a process the way SpiffArena's backend delivers it
(``MessageService.process_message_receive``): a ``MessageEventDefinition`` with the waiting
event's correlation properties, the correlations its retrieval expressions compute from the
payload, and ``BpmnWorkflow.send_event(BpmnEvent(...))``; whether a process catches it is
SpiffWorkflow's decision (``MessageEventDefinition.catches``), not ours.

``POST /v1.0/messages/{modified_message_name}`` follows ``routes/messages_controller.py`` and
``MessageService.run_process_model_from_message`` of sartography/spiff-arena:

- ``modified_message_name``: what follows the last ``:`` is the message name; the process
  group before it is not used to correlate (SpiffArena's send path ignores it too).
- query ``time_to_live_in_seconds`` (0..300, checked by the OpenAPI layer first: 400 problem
  "Bad Request") and ``message_instance_uuid`` (a hyphenated UUID, required when the TTL is
  above 0: 400 ``message_instance_uuid_required``).
- The JSON body (an object) is the payload.
- A known uuid: another name or payload is 409 ``message_instance_uuid_conflict``; one that was
  not accepted is 400 ``message_not_accepted`` again, forever; otherwise its first answer is
  replayed (200 with the process that caught it, or 202 with the buffered message instance).
- Caught by a waiting process: 200 ``{"task_data", "process_instance"}``. Not caught: with a
  TTL, buffered (202 ``{"message_instance"}``, status ``ready``) until a process waits for it
  or it expires (``cancelled``); without, 400 ``message_not_accepted`` and kept as
  ``not_accepted``. A process that fails on the message: 400 ``unexpected_workflow_exception``
  (SpiffArena's ``ApiError.from_workflow_exception``), the message ``failed``.
- Errors are connexion's problem JSON with the ApiError's fields (``error_code``, ``message``).

Not modelled: message start events (none of the test processes has one), execution modes,
users. ``api_key`` stands for a service account's ``SpiffWorkflow-Api-Key``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from SpiffWorkflow.bpmn import BpmnEvent, BpmnWorkflow
from SpiffWorkflow.bpmn.serializer import BpmnWorkflowSerializer
from SpiffWorkflow.exceptions import SpiffWorkflowException, WorkflowException
from SpiffWorkflow.spiff.parser.process import SpiffBpmnParser
from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG
from SpiffWorkflow.spiff.specs.event_definitions import MessageEventDefinition
from SpiffWorkflow.task import TaskState

MAX_TIME_TO_LIVE_SECONDS = 300  # MessageService.MAX_TIME_TO_LIVE_SECONDS
UUID_PATTERN = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)  # api.yml, message_instance_uuid
ORDER_PAYMENT = Path(__file__).with_name("order_payment.bpmn")


class ApiError(Exception):
    """SpiffArena's ApiError, answered as connexion's problem JSON with its fields."""

    def __init__(self, error_code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.error_code, self.message, self.status = error_code, message, status

    def body(self) -> dict[str, Any]:
        return {
            "type": "about:blank",
            "title": self.error_code,
            "detail": self.message,
            "status": self.status,
            "error_code": self.error_code,
            "message": self.message,
        }


class BadRequest(ApiError):
    """The OpenAPI layer's refusal (connexion), before any of SpiffArena's code runs."""

    def __init__(self, detail: str) -> None:
        super().__init__("bad_request", detail)

    def body(self) -> dict[str, Any]:
        return {
            "type": "about:blank",
            "title": "Bad Request",
            "detail": self.message,
            "status": 400,
        }


@dataclass
class MessageInstance:
    """A ``send`` message instance (SpiffArena's ``message_instance`` row)."""

    id: int
    name: str
    payload: dict[str, Any]
    status: str  # ready, running, completed, failed, cancelled, not_accepted
    message_instance_uuid: str | None
    expires_at_in_seconds: int | None
    created_at_in_seconds: int
    process_instance_id: int | None = None
    """The process that caught it (SpiffArena reaches it through the counterpart)."""
    failure_cause: str | None = None

    def serialized(self) -> dict[str, Any]:
        """As ``messages_controller._message_instance_response``."""
        return {
            "id": self.id,
            "name": self.name,
            "message_type": "send",
            "status": self.status,
            "message_instance_uuid": self.message_instance_uuid,
            "expires_at_in_seconds": self.expires_at_in_seconds,
        }


@dataclass
class ProcessInstance:
    id: int
    process_model_identifier: str
    state: str
    """The ``BpmnWorkflow``, serialized between requests."""
    status: str  # waiting, complete, error, ...
    created_at_in_seconds: int
    caught: list[int] = field(default_factory=list)
    """The message instances it caught, in order."""

    def serialized(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "process_model_identifier": self.process_model_identifier,
            "status": self.status,
            "created_at_in_seconds": self.created_at_in_seconds,
        }


class SpiffEngine:
    """Process instances and message instances in memory, the processes run by SpiffWorkflow."""

    def __init__(
        self,
        bpmn_files: Iterable[Path] = (ORDER_PAYMENT,),
        clock: Callable[[], float] = time.time,
    ) -> None:
        parser = SpiffBpmnParser()
        parser.add_bpmn_files([str(p) for p in bpmn_files])
        self._specs = {pid: parser.get_spec(pid) for pid in parser.get_process_ids()}
        self._serializer = BpmnWorkflowSerializer(BpmnWorkflowSerializer.configure(SPIFF_CONFIG))
        self._clock = clock
        self._ids = itertools.count(1)
        self.processes: dict[int, ProcessInstance] = {}
        self.messages: list[MessageInstance] = []

    def now(self) -> int:
        return round(self._clock())

    # -- processes ---------------------------------------------------------------------------

    def start(self, process_model: str, data: dict[str, Any]) -> ProcessInstance:
        """Start a process with ``data`` and run it until it waits (or ends); then, as
        SpiffArena does when a process starts waiting, hand it the buffered messages."""
        workflow = BpmnWorkflow(self._specs[process_model])
        workflow.get_tasks(state=TaskState.READY)[0].data.update(data)
        instance = ProcessInstance(next(self._ids), process_model, "", "running", self.now())
        self.processes[instance.id] = instance
        self._run(instance, workflow)
        self._correlate_buffered(instance)
        return instance

    def workflow(self, instance: ProcessInstance) -> BpmnWorkflow:
        return self._serializer.deserialize_json(instance.state)

    def data(self, process_id: int) -> dict[str, Any]:
        """The data of its last completed task (SpiffArena's ``ProcessInstanceModel.get_data``)."""
        last = self.workflow(self.processes[process_id]).last_task
        return dict(last.data) if last is not None else {}

    def waiting_for(self, process_id: int) -> list[str]:
        workflow = self.workflow(self.processes[process_id])
        return sorted(e.name for e in workflow.waiting_events())

    def _run(self, instance: ProcessInstance, workflow: BpmnWorkflow) -> None:
        workflow.do_engine_steps()
        instance.status = "complete" if workflow.is_completed() else "waiting"
        instance.state = self._serializer.serialize_json(workflow)

    # -- messages ----------------------------------------------------------------------------

    def send(
        self,
        modified_message_name: str,
        body: dict[str, Any],
        *,
        time_to_live_in_seconds: int | None = None,
        message_instance_uuid: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """``message_send``: the status and the JSON answer (ApiError raised)."""
        message = self._run_process_model_from_message(
            modified_message_name, body, time_to_live_in_seconds, message_instance_uuid
        )
        if message.process_instance_id is not None:
            process = self.processes[message.process_instance_id]
            return 200, {
                "task_data": self.data(process.id),
                "process_instance": process.serialized(),
            }
        return 202, {"message_instance": message.serialized()}

    def _run_process_model_from_message(
        self,
        modified_message_name: str,
        body: dict[str, Any],
        ttl_param: int | None,
        uuid_param: str | None,
    ) -> MessageInstance:
        name = modified_message_name.split(":")[-1]
        ttl = ttl_param or 0
        if ttl > 0 and not uuid_param:
            raise ApiError(
                "message_instance_uuid_required",
                "message_instance_uuid is required when time_to_live_in_seconds is greater than 0.",
            )
        key = self._canonical_uuid(uuid_param)
        now = self.now()
        self._expire_buffered(now)
        existing = next(
            (m for m in self.messages if key is not None and m.message_instance_uuid == key), None
        )
        if existing is not None:
            if existing.name != name or existing.payload != body:
                raise ApiError(
                    "message_instance_uuid_conflict",
                    "A message with the same message_instance_uuid already exists for a "
                    "different message or payload.",
                    409,
                )
            if existing.status == "not_accepted":
                raise ApiError(
                    "message_not_accepted",
                    existing.failure_cause or _not_accepted(modified_message_name),
                )
            return existing  # idempotent replay
        message = MessageInstance(
            id=len(self.messages) + 1,
            name=name,
            payload=body,
            status="running",
            message_instance_uuid=key,
            expires_at_in_seconds=now + ttl if ttl > 0 else None,
            created_at_in_seconds=now,
        )
        self.messages.append(message)
        if self._correlate(message, self.processes.values()):
            return message
        if ttl > 0:
            message.status = "ready"  # buffered
            return message
        message.status = "not_accepted"
        message.failure_cause = _not_accepted(modified_message_name)
        raise ApiError("message_not_accepted", message.failure_cause)

    @staticmethod
    def _canonical_uuid(value: str | None) -> str | None:
        """``_validated_message_instance_uuid``: at most 40 characters, a UUID in its
        canonical form (any case); stored lower case."""
        if value is None:
            return None
        if len(value) > 40:
            raise ApiError(
                "invalid_message_instance_uuid",
                "message_instance_uuid must be 40 characters or fewer.",
            )
        try:
            parsed = uuid.UUID(value)
        except ValueError:
            parsed = None
        if parsed is None or str(parsed) != value.lower():
            raise ApiError(
                "invalid_message_instance_uuid", "message_instance_uuid must be a valid UUID."
            )
        return str(parsed)

    def _expire_buffered(self, now: int) -> None:
        for message in self.messages:
            expires = message.expires_at_in_seconds
            if message.status == "ready" and expires is not None and expires <= now:
                message.status = "cancelled"

    def _correlate(self, message: MessageInstance, candidates: Iterable[ProcessInstance]) -> bool:
        """Offer ``message`` to each waiting process in turn; True once one caught it."""
        for process in candidates:
            if process.status != "waiting":
                continue
            workflow = self.workflow(process)
            for event in self._events_for(workflow, message):
                try:
                    workflow.send_event(event)
                except WorkflowException:
                    continue  # SpiffWorkflow: this process does not wait for this message
                try:
                    self._run(process, workflow)
                except SpiffWorkflowException as exc:
                    process.status = "error"
                    message.status, message.failure_cause = "failed", str(exc)
                    raise ApiError(
                        "unexpected_workflow_exception", f"Unexpected Workflow Error: {exc}"
                    ) from exc
                message.status, message.process_instance_id = "completed", process.id
                process.caught.append(message.id)
                self._correlate_buffered(process)
                return True
        return False

    @staticmethod
    def _events_for(workflow: BpmnWorkflow, message: MessageInstance) -> Iterator[BpmnEvent]:
        """The event SpiffArena would send this workflow for each of its waiting message
        events of that name: the message definition with the waiting event's correlation
        properties, and the correlations their retrieval expressions compute from the payload
        (a payload they cannot be computed from correlates with nothing here)."""
        for waiting in workflow.waiting_events():
            if waiting.event_type != "MessageEventDefinition" or waiting.name != message.name:
                continue
            definition = MessageEventDefinition(message.name, correlation_properties=waiting.value)
            try:
                correlations = definition.calculate_correlations(
                    workflow.script_engine, definition.correlation_properties, message.payload
                )
            except Exception:  # SpiffArena logs it and moves on: no match
                continue
            yield BpmnEvent(definition, payload=message.payload, correlations=correlations)

    def _correlate_buffered(self, process: ProcessInstance) -> None:
        """``correlate_ready_send_messages_for_process_instance``: buffered (TTL) messages,
        oldest first, offered to a process that now waits."""
        self._expire_buffered(self.now())
        for message in self.messages:
            if process.status != "waiting":
                return
            if message.status == "ready" and message.expires_at_in_seconds is not None:
                message.status = "running"
                try:
                    if not self._correlate(message, [process]):
                        message.status = "ready"
                except ApiError:
                    continue  # the process failed on it: both are marked so


def _not_accepted(modified_message_name: str) -> str:
    return (
        "No running process instances correlate with the given message"
        f" name of '{modified_message_name}'.  And this message name is not"
        " currently associated with any process Start Event. Nothing"
        " to do."
    )


# -- HTTP ------------------------------------------------------------------------------------


HELD = web.AppKey("held", list[float])
"""Seconds to hold back each of the next answers after the engine did the work (a client
whose timeout is shorter never hears it: a lost answer)."""


def create_app(engine: SpiffEngine, api_key: str | None = None) -> web.Application:
    async def message_send(request: web.Request) -> web.Response:
        try:
            if api_key is not None and request.headers.get("SpiffWorkflow-Api-Key") != api_key:
                raise ApiError("not_authenticated", "No valid API key or token given.", 401)
            ttl = _int_param(request, "time_to_live_in_seconds", 0, MAX_TIME_TO_LIVE_SECONDS)
            key = request.query.get("message_instance_uuid")
            if key is not None and (len(key) > 40 or not UUID_PATTERN.match(key)):
                raise BadRequest(f"'{key}' does not match '{UUID_PATTERN.pattern}'")
            try:
                body = json.loads(await request.read())
            except ValueError:
                raise BadRequest("Request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise BadRequest(f"{body!r} is not of type 'object'")
            status, answer = engine.send(
                request.match_info["modified_message_name"],
                body,
                time_to_live_in_seconds=ttl,
                message_instance_uuid=key,
            )
        except ApiError as exc:
            return web.json_response(
                exc.body(), status=exc.status, content_type="application/problem+json"
            )
        if request.app[HELD]:
            await asyncio.sleep(request.app[HELD].pop(0))
        return web.json_response(answer, status=status)

    async def message_instance_list(request: web.Request) -> web.Response:
        results = [m.serialized() for m in reversed(engine.messages)]
        return web.json_response(
            {"results": results, "pagination": {"count": len(results), "total": len(results)}}
        )

    app = web.Application()
    app[HELD] = []
    app.router.add_post("/v1.0/messages/{modified_message_name}", message_send)
    app.router.add_get("/v1.0/messages", message_instance_list)
    return app


def _int_param(request: web.Request, name: str, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"Wrong type, expected 'integer' for query parameter '{name}'") from None
    if not low <= value <= high:
        bound = f"less than the minimum of {low}"
        if value > high:
            bound = f"greater than the maximum of {high}"
        raise BadRequest(f"{value} is {bound} - '{name}'")
    return value


class SpiffServer:
    """The engine's app on 127.0.0.1; ``url`` is what a ``spiff`` webhook points at."""

    def __init__(self, engine: SpiffEngine, api_key: str | None = None) -> None:
        self.engine = engine
        self._app = create_app(engine, api_key)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lose_answers(self, count: int, seconds: float) -> None:
        """Hold each of the next ``count`` answers back ``seconds``, after the work is done."""
        self._app[HELD].extend([seconds] * count)

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
