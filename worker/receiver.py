"""The Alertmanager receiver: `POST /alertmanager` turns firing alerts into `report_breach` signals.

Alertmanager's webhook (version 4) is authenticated with
`Authorization: Bearer $ROLLOUT_RECEIVER_TOKEN`. Each alert names its rollout with
the label `rollout` (a plan name, or a workflow id) and its threshold with
`threshold`; an optional label `action` asks for a stricter containment.

- firing alert of a running rollout -> signal `report_breach` (repeats are
  harmless: the workflow records them and changes nothing);
- resolved alert -> logged and reported in the response, never signalled: a
  resolved alert never resumes a rollout;
- 401 without the right token, 413 for a body over `max_body`, 400 with a reason
  for a body that is not a version-4 webhook, 404 when no firing alert named a
  known rollout, 409 when they named closed rollouts, 503 when Temporal could not
  be reached (Alertmanager retries; repeats are harmless), otherwise 200 with a
  per-alert summary `{"signalled", "resolved_recorded", "errors"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from rollout.thresholds import ACTION_ORDER

log = logging.getLogger("rollout.receiver")

ACTIONS = ACTION_ORDER
RPC_TIMEOUT = timedelta(seconds=10)
MAX_LABEL = 255


# ---- the webhook body (Alertmanager's webhook, version 4) ------------------------------


def _timestamp(v: str) -> str:
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(f"not an RFC 3339 timestamp: {v[:64]!r}") from None
    return v if dt.tzinfo is not None else v + "Z"


class AlertmanagerAlert(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str
    endsAt: str | None = None
    generatorURL: str = ""
    fingerprint: str = ""

    @field_validator("startsAt")
    @classmethod
    def _starts(cls, v: str) -> str:
        return _timestamp(v)

    def observed_at(self) -> datetime:
        dt = datetime.fromisoformat(self.startsAt)
        return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


class AlertmanagerWebhook(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    version: Literal["4"]
    groupKey: str
    truncatedAlerts: int = 0
    status: Literal["firing", "resolved"]
    receiver: str
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[AlertmanagerAlert]


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out or "(body)"


def validation_reason(exc: ValidationError) -> str:
    errs = exc.errors(include_url=False, include_input=False)
    parts = [f"{_loc(tuple(e['loc']))}: {e['msg']}" for e in errs[:5]]
    more = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
    return "not an Alertmanager webhook (version 4): " + "; ".join(parts) + more


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_body(raw: bytes) -> AlertmanagerWebhook:
    """Decode and check a webhook body; ValueError with a reason if it is not one."""
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8") from None
    except RecursionError:
        raise ValueError("malformed JSON: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("not an Alertmanager webhook (version 4): the body must be a JSON object")
    try:  # lone surrogates (\ud800) decode but cannot be passed on as UTF-8
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("malformed JSON: a string holds an invalid unicode escape") from None
    except RecursionError:
        raise ValueError("malformed JSON: nested too deeply") from None
    if "version" in data and data["version"] != "4":
        raise ValueError(f"unsupported webhook version {str(data['version'])[:20]!r}; expected \"4\"")
    try:
        return AlertmanagerWebhook.model_validate(data)
    except ValidationError as exc:
        raise ValueError(validation_reason(exc)) from None
    except RecursionError:
        raise ValueError("malformed JSON: nested too deeply") from None


# ---- delivering alerts --------------------------------------------------------------------


def workflow_id_candidates(rollout: str) -> list[str]:
    """A plan name means `rollout-<name>`; a value already starting with `rollout-` is tried as given first."""
    if rollout.startswith("rollout-"):
        return [rollout, f"rollout-{rollout}"]
    return [f"rollout-{rollout}", rollout]


def _numeric(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def breach_payload(body: AlertmanagerWebhook, alert: AlertmanagerAlert) -> dict[str, Any]:
    """The `report_breach` signal payload for one firing alert."""
    detail: dict[str, Any] = {
        "labels": alert.labels,
        "annotations": alert.annotations,
        "fingerprint": alert.fingerprint,
        "generatorURL": alert.generatorURL,
        "receiver": body.receiver,
        "groupKey": body.groupKey,
        "status": alert.status,
        "startsAt": alert.startsAt,
    }
    if body.externalURL:
        detail["externalURL"] = body.externalURL
    payload: dict[str, Any] = {
        "source": "alertmanager",
        "threshold": alert.labels.get("threshold") or None,
        "observed_at": alert.observed_at().isoformat(),
        "detail": detail,
    }
    value = _numeric(alert.annotations.get("value"))
    if value is not None:
        payload["value"] = value
    action = alert.labels.get("action")
    if action in ACTIONS:
        payload["action"] = action
    elif action is not None:
        detail["ignored_action"] = action
    return payload


class _Transient(Exception):
    pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


@dataclass
class _Outcome:
    signalled: list[dict[str, Any]] = field(default_factory=list)
    resolved: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def status_code(self) -> int:
        codes = {e["status"] for e in self.errors}
        if 503 in codes:
            return 503  # Alertmanager retries; repeats are harmless
        if self.signalled or not codes:
            return 200
        for code in (404, 409, 400):
            if code in codes:
                return code
        return 400

    def body(self) -> dict[str, Any]:
        return {"signalled": self.signalled, "resolved_recorded": self.resolved, "errors": self.errors}


class _Deliverer:
    def __init__(self, client: Client) -> None:
        self.client = client
        self._resolved: dict[str, tuple[str | None, WorkflowExecutionStatus | None]] = {}

    async def find(self, rollout: str) -> tuple[str | None, WorkflowExecutionStatus | None]:
        """The workflow id behind a `rollout` label and its status (None, None: unknown)."""
        if rollout in self._resolved:
            return self._resolved[rollout]
        found: tuple[str | None, WorkflowExecutionStatus | None] = (None, None)
        for wid in workflow_id_candidates(rollout):
            try:
                desc = await self.client.get_workflow_handle(wid).describe(rpc_timeout=RPC_TIMEOUT)
            except RPCError as exc:
                if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                    continue
                raise _Transient(f"Temporal: {exc.message}") from None
            except Exception as exc:  # cannot connect, timed out
                raise _Transient(f"Temporal unreachable: {_first_line(exc)}") from None
            found = (wid, desc.status)
            break
        self._resolved[rollout] = found
        return found

    async def signal(self, wid: str, payload: dict[str, Any]) -> Literal["ok", "closed"]:
        try:
            await self.client.get_workflow_handle(wid).signal(
                "report_breach", payload, rpc_timeout=RPC_TIMEOUT
            )
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:  # closed between describe and signal
                return "closed"
            raise _Transient(f"Temporal: {exc.message}") from None
        except Exception as exc:  # cannot connect, timed out
            raise _Transient(f"Temporal unreachable: {_first_line(exc)}") from None
        return "ok"


async def deliver(client: Client, body: AlertmanagerWebhook) -> _Outcome:
    out = _Outcome()
    d = _Deliverer(client)
    for i, alert in enumerate(body.alerts):
        rollout = alert.labels.get("rollout", "")
        threshold = alert.labels.get("threshold")
        ref = {
            "index": i,
            "rollout": rollout or None,
            "threshold": threshold,
            "fingerprint": alert.fingerprint,
            "startsAt": alert.startsAt,
        }
        if alert.status == "resolved":
            rec = {**ref, "endsAt": alert.endsAt}
            out.resolved.append(rec)
            log.info(
                "resolved alert recorded (never resumes a rollout): rollout=%s threshold=%s fingerprint=%s "
                "startsAt=%s endsAt=%s",
                rollout,
                threshold,
                alert.fingerprint,
                alert.startsAt,
                alert.endsAt,
            )
            continue
        if not rollout:
            out.errors.append({**ref, "status": 400, "error": "alert has no 'rollout' label"})
            continue
        if len(rollout) > MAX_LABEL:
            out.errors.append({**ref, "status": 400, "error": "label 'rollout' is too long"})
            continue
        try:
            wid, status = await d.find(rollout)
            if wid is None:
                out.errors.append({**ref, "status": 404, "error": f"unknown rollout {rollout!r}"})
                continue
            if status != WorkflowExecutionStatus.RUNNING:
                state = status.name.lower() if status is not None else "closed"
                out.errors.append({**ref, "workflow_id": wid, "status": 409, "error": f"rollout is {state}"})
                continue
            result = await d.signal(wid, breach_payload(body, alert))
        except _Transient as exc:
            out.errors.append({**ref, "status": 503, "error": str(exc)})
            continue
        if result == "closed":
            out.errors.append({**ref, "workflow_id": wid, "status": 409, "error": "rollout is closed"})
            continue
        out.signalled.append({**ref, "workflow_id": wid})
        log.info("report_breach sent to %s for threshold %s (alert %s)", wid, threshold, alert.fingerprint)
    return out


# ---- the ASGI app ------------------------------------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _authorized(request: Request, token: bytes) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, max_body: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ValueError("invalid Content-Length")
        if int(declared) > max_body:
            raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(client: Client, token: str, *, max_body: int = 1_000_000) -> Starlette:
    """The receiver's ASGI app: `POST /alertmanager` and `GET /healthz`."""
    if not token.strip():
        raise ValueError("the receiver needs a bearer token (ROLLOUT_RECEIVER_TOKEN)")
    secret = token.strip().encode("utf-8")

    async def alertmanager(request: Request) -> Response:
        try:
            if not _authorized(request, secret):
                return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
            try:
                raw = await _read_body(request, max_body)
            except _TooLarge:
                return _error(413, f"body larger than {max_body} bytes")
            except ValueError as exc:
                return _error(400, str(exc))
            except ClientDisconnect:
                return _error(400, "client disconnected")
            try:
                body = parse_body(raw)
            except ValueError as exc:
                return _error(400, str(exc))
            outcome = await deliver(client, body)
            return JSONResponse(outcome.body(), status_code=outcome.status_code())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("receiver failed on a request")
            return _error(500, "internal error; see the receiver's log")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/alertmanager", alertmanager, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


async def serve(client: Client, token: str, host: str, port: int, *, log_level: str = "warning") -> None:
    """Serve the receiver until cancelled (no signal handlers: the caller owns Ctrl-C).

    The socket is bound before the server starts, so a port in use raises OSError here.
    """
    import uvicorn

    app = create_app(client, token)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    config = uvicorn.Config(app, log_level=log_level, lifespan="off", access_log=False)

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield

    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)
        raise
    finally:
        sock.close()
