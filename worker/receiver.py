"""The Alertmanager receiver: `POST /alertmanager` turns alerts into rollout signals.

Alertmanager's webhook (version 4) is authenticated with
`Authorization: Bearer $ROLLOUT_RECEIVER_TOKEN`. Each alert names its rollout with
the label `rollout` (a plan name, or a workflow id), its threshold with `threshold`
and, as `rollout plan rules` generates them, the stage it was written for with
`stage`; an optional label `action` asks for a stricter containment.

- firing alert of a running rollout -> signal `report_breach` with `stage` from the
  label (the rollout records, and does not act on, a breach for a stage that is not
  its `exposure_stage`; repeats are harmless);
- a no-data alert of an `on_no_data: hold` threshold (label `on_no_data="hold"`) is
  inconclusive: it is reported without a threshold name, which holds, the threshold
  kept in `detail.no_data_threshold`;
- resolved alert -> signal `report_resolved` (`observed_at` its `endsAt`): recorded in
  the breach's evidence, never resumes a rollout;
- 401 without the right token, 413 for a body over `max_body`, 400 with a reason
  for a body that is not a version-4 webhook, 404 when no alert named a known
  rollout, 409 when they named closed rollouts, 503 when Temporal could not be
  reached (Alertmanager retries; repeats are harmless), otherwise 200 with a
  per-alert summary `{"signalled", "resolved_recorded", "errors", "skipped"}`.

Every input is bounded where it enters (`Limits`): the body (1 MiB), the alerts per
request (100 after dropping duplicates in the request; the rest answered 413 per
alert), each label and annotation value (1 KiB, cut with a visible
`…[truncated N bytes]` mark), the labels and annotations per alert, and the whole
signal payload (16 KiB: values are cut harder, then annotations and other labels
dropped, with `detail.truncated: true`). Whatever a sender does, nothing big
reaches a signal.

`GET /healthz` (alive), `GET /readyz` (Temporal answers), `GET /metrics` (Prometheus:
requests by code, signals sent, errors, truncations). `create_app(..., routes=[...])`
mounts more routes on the same app.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from rollout.thresholds import ACTION_ORDER

log = logging.getLogger("rollout.receiver")

ACTIONS = ACTION_ORDER
RPC_TIMEOUT = timedelta(seconds=10)
READY_TIMEOUT = timedelta(seconds=3)
MAX_LABEL = 255  # the `rollout` label: a plan name or workflow id


@dataclass(frozen=True)
class Limits:
    """Bounds on what a request may bring in."""

    max_body: int = 1024 * 1024  # bytes; larger bodies are refused with 413
    max_alerts: int = 100  # distinct alerts handled per request; the rest get a 413 entry
    max_value: int = 1024  # bytes per label/annotation value (and other strings) before the cut
    max_entries: int = 64  # labels (and annotations) kept per alert
    max_key: int = 128  # bytes per label/annotation name
    max_signal: int = 16 * 1024  # bytes of one signal payload (JSON)


# ---- bounding values -------------------------------------------------------------------------


def clip(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to at most `limit` UTF-8 bytes plus a visible mark; (text, was it cut)."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text, False
    kept = raw[:limit].decode("utf-8", "ignore")
    return f"{kept}…[truncated {len(raw) - len(kept.encode('utf-8'))} bytes]", True


class _Clipper:
    """Cuts values to the limits and counts what it cut."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.cut = 0

    def value(self, text: str, limit: int | None = None) -> str:
        out, was = clip(text, self.limits.max_value if limit is None else limit)
        self.cut += was
        return out

    def mapping(self, values: dict[str, str], limit: int | None = None) -> dict[str, str]:
        out: dict[str, str] = {}
        for i, (k, v) in enumerate(values.items()):
            if i >= self.limits.max_entries:
                out["…"] = f"{len(values) - i} more dropped"
                self.cut += 1
                break
            out[self.value(k, self.limits.max_key)] = self.value(v, limit)
        return out


def json_size(payload: Any) -> int:
    return len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


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

    def resolved_at(self) -> datetime:
        """`endsAt` of a resolved alert; when missing or unset (Alertmanager's zero time), now."""
        if self.endsAt and len(self.endsAt) <= 64:
            try:
                dt = datetime.fromisoformat(self.endsAt)
            except ValueError:
                dt = None
            if dt is not None and dt.year > 1:
                return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
        return datetime.now(UTC)


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
    if text is None or len(text) > 64:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


ESSENTIAL_LABELS = ("rollout", "threshold", "stage", "action", "alertname", "on_no_data", "severity")
# successively harder cuts until a payload fits `max_signal`: (value limit, keep annotations, all labels)
_LEVELS = ((None, True, True), (256, True, True), (64, True, True), (64, False, True), (64, False, False))


def _detail(
    body: AlertmanagerWebhook, alert: AlertmanagerAlert, clipper: _Clipper, level: int
) -> dict[str, Any]:
    limit, annotations, all_labels = _LEVELS[level]
    small = 64 if limit is None else min(64, limit)
    labels = alert.labels if all_labels else {k: v for k, v in alert.labels.items() if k in ESSENTIAL_LABELS}
    detail: dict[str, Any] = {
        "labels": clipper.mapping(labels, limit),
        "annotations": (
            clipper.mapping(alert.annotations, limit)
            if annotations
            else {"…": "dropped: the signal payload was too large"}
        ),
        "fingerprint": clipper.value(alert.fingerprint, small),
        "generatorURL": clipper.value(alert.generatorURL, limit),
        "receiver": clipper.value(body.receiver, 256 if limit is None else limit),
        "groupKey": clipper.value(body.groupKey, limit),
        "status": alert.status,
        "startsAt": clipper.value(alert.startsAt, 64),
    }
    if alert.status == "resolved" and alert.endsAt is not None:
        detail["endsAt"] = clipper.value(alert.endsAt, 64)
    if body.externalURL:
        detail["externalURL"] = clipper.value(body.externalURL, limit)
    if level > 0:
        detail["truncated"] = True
    return detail


def _fitted(
    make: Any, body: AlertmanagerWebhook, alert: AlertmanagerAlert, limits: Limits
) -> tuple[dict[str, Any], int]:
    """The payload `make(body, alert, clipper, level)` at the first level that fits
    `limits.max_signal` bytes; with the number of values cut."""
    for level in range(len(_LEVELS)):
        clipper = _Clipper(limits)
        payload: dict[str, Any] = make(body, alert, clipper, level)
        if json_size(payload) <= limits.max_signal:
            return payload, clipper.cut + (level > 0)
    raise ValueError("alert too large to report even after cutting it down")  # not reached: ~3 KB at most


def breach_payload(body: AlertmanagerWebhook, alert: AlertmanagerAlert, limits: Limits | None = None) -> dict[str, Any]:
    """The `report_breach` signal payload for one firing alert (bounded by `limits`)."""
    return _fitted(_breach_payload, body, alert, limits or Limits())[0]


def _breach_payload(
    body: AlertmanagerWebhook, alert: AlertmanagerAlert, clipper: _Clipper, level: int
) -> dict[str, Any]:
    detail = _detail(body, alert, clipper, level)
    threshold = alert.labels.get("threshold") or None
    payload: dict[str, Any] = {
        "source": "alertmanager",
        "threshold": None if threshold is None else clipper.value(threshold, 200),
        "observed_at": alert.observed_at().isoformat(),
        "detail": detail,
    }
    if alert.labels.get("on_no_data") == "hold" and payload["threshold"] is not None:
        # inconclusive: holds whatever the threshold's action (a breach without a name holds)
        detail["no_data_threshold"] = payload["threshold"]
        payload["threshold"] = None
    stage = alert.labels.get("stage")
    if stage:
        payload["stage"] = clipper.value(stage, 200)
    value = _numeric(alert.annotations.get("value"))
    if value is not None:
        payload["value"] = value
    action = alert.labels.get("action")
    if action in ACTIONS:
        payload["action"] = action
    elif action is not None:
        detail["ignored_action"] = clipper.value(action, 64)
    return payload


def resolved_payload(body: AlertmanagerWebhook, alert: AlertmanagerAlert, limits: Limits | None = None) -> dict[str, Any]:
    """The `report_resolved` signal payload for one resolved alert (bounded by `limits`)."""
    return _fitted(_resolved_payload, body, alert, limits or Limits())[0]


def _resolved_payload(
    body: AlertmanagerWebhook, alert: AlertmanagerAlert, clipper: _Clipper, level: int
) -> dict[str, Any]:
    threshold = alert.labels.get("threshold") or None
    return {
        "source": "alertmanager",
        "threshold": None if threshold is None else clipper.value(threshold, 200),
        "observed_at": alert.resolved_at().isoformat(),
        "detail": _detail(body, alert, clipper, level),
    }


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
    skipped: list[dict[str, Any]] = field(default_factory=list)
    truncated: int = 0

    def status_code(self) -> int:
        codes = {e["status"] for e in self.errors}
        if 503 in codes:
            return 503  # Alertmanager retries; repeats are harmless
        if self.signalled or self.resolved or not codes:
            return 200
        for code in (404, 409, 400, 413):
            if code in codes:
                return code
        return 400

    def body(self) -> dict[str, Any]:
        return {
            "signalled": self.signalled,
            "resolved_recorded": self.resolved,
            "errors": self.errors,
            "skipped": self.skipped,
        }


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

    async def signal(self, wid: str, name: str, payload: dict[str, Any]) -> Literal["ok", "closed"]:
        try:
            await self.client.get_workflow_handle(wid).signal(name, payload, rpc_timeout=RPC_TIMEOUT)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:  # closed between describe and signal
                return "closed"
            raise _Transient(f"Temporal: {exc.message}") from None
        except Exception as exc:  # cannot connect, timed out
            raise _Transient(f"Temporal unreachable: {_first_line(exc)}") from None
        return "ok"


def _dedupe_key(alert: AlertmanagerAlert) -> str:
    """Same status, labels and start: the same alert sent twice in one request."""
    ident = json.dumps([alert.status, sorted(alert.labels.items()), alert.startsAt], ensure_ascii=False)
    return hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()


class _Metrics:
    """The receiver's own metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "rollout_receiver_requests", "HTTP requests to the receiver by path and status code",
            ["path", "code"], registry=self.registry,
        )
        self.signals = Counter(
            "rollout_receiver_signals", "Signals sent to rollouts, by signal name",
            ["signal"], registry=self.registry,
        )
        self.errors = Counter(
            "rollout_receiver_errors",
            "Alerts not delivered (status 400, 404, 409, 413, 503) and requests that failed (500)",
            ["status"], registry=self.registry,
        )
        self.truncated = Counter(
            "rollout_receiver_truncated_values",
            "Label, annotation and other values cut (or dropped) to keep signals bounded",
            registry=self.registry,
        )
        self.skipped = Counter(
            "rollout_receiver_skipped_alerts", "Alerts skipped as duplicates within one request",
            registry=self.registry,
        )
        for code in ("200", "400", "401", "404", "409", "413", "500", "503"):
            self.requests.labels("/alertmanager", code)
        for name in ("report_breach", "report_resolved"):
            self.signals.labels(name)
        for status in ("400", "404", "409", "413", "500", "503"):
            self.errors.labels(status)


async def deliver(
    client: Client, body: AlertmanagerWebhook, limits: Limits | None = None, metrics: _Metrics | None = None
) -> _Outcome:
    limits = limits or Limits()
    out = _Outcome()
    d = _Deliverer(client)
    cut = 0
    seen: set[str] = set()
    handled = 0
    for i, alert in enumerate(body.alerts):
        rollout = alert.labels.get("rollout", "")
        threshold = alert.labels.get("threshold")
        ref = {
            "index": i,
            "rollout": clip(rollout, MAX_LABEL)[0] or None,
            "threshold": None if threshold is None else clip(threshold, 256)[0],
            "fingerprint": clip(alert.fingerprint, 64)[0],
            "startsAt": clip(alert.startsAt, 64)[0],
        }
        key = _dedupe_key(alert)
        if key in seen:
            out.skipped.append({"index": i, "reason": "duplicate of an earlier alert in this request"})
            if metrics:
                metrics.skipped.inc()
            continue
        seen.add(key)
        if handled >= limits.max_alerts:
            out.errors.append({**ref, "status": 413,
                               "error": f"more than {limits.max_alerts} alerts in one request; set max_alerts"})
            continue
        handled += 1
        if not rollout:
            out.errors.append({**ref, "status": 400, "error": "alert has no 'rollout' label"})
            continue
        if len(rollout) > MAX_LABEL:
            out.errors.append({**ref, "status": 400, "error": "label 'rollout' is too long"})
            continue
        resolved = alert.status == "resolved"
        try:
            payload, n = _fitted(_resolved_payload if resolved else _breach_payload, body, alert, limits)
            cut += n
        except ValueError as exc:
            out.errors.append({**ref, "status": 400, "error": str(exc)})
            continue
        name = "report_resolved" if resolved else "report_breach"
        try:
            wid, status = await d.find(rollout)
            if wid is None:
                out.errors.append({**ref, "status": 404, "error": f"unknown rollout {ref['rollout']!r}"})
                continue
            if status != WorkflowExecutionStatus.RUNNING:
                state = status.name.lower() if status is not None else "closed"
                out.errors.append({**ref, "workflow_id": wid, "status": 409, "error": f"rollout is {state}"})
                continue
            result = await d.signal(wid, name, payload)
        except _Transient as exc:
            out.errors.append({**ref, "status": 503, "error": str(exc)})
            continue
        if result == "closed":
            out.errors.append({**ref, "workflow_id": wid, "status": 409, "error": "rollout is closed"})
            continue
        if metrics:
            metrics.signals.labels(name).inc()
        if resolved:
            out.resolved.append({**ref, "workflow_id": wid, "endsAt": payload["observed_at"]})
            log.info("report_resolved sent to %s for threshold %s (alert %s; never resumes a rollout)",
                     wid, ref["threshold"], ref["fingerprint"])
        else:
            out.signalled.append({**ref, "workflow_id": wid})
            log.info("report_breach sent to %s for threshold %s (alert %s)", wid, ref["threshold"], ref["fingerprint"])
    out.truncated = cut
    if metrics:
        metrics.truncated.inc(cut)
        for e in out.errors:
            metrics.errors.labels(str(e["status"])).inc()
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


class TemporalReadiness:
    """`/readyz`: Temporal's frontend answers a health check (cached for `ttl` seconds)."""

    def __init__(self, client: Client, ttl: float = 2.0) -> None:
        self.client = client
        self.ttl = ttl
        self._at = -math.inf
        self._last: tuple[bool, str] = (False, "not checked yet")
        self._lock = asyncio.Lock()

    async def check(self) -> tuple[bool, str]:
        async with self._lock:
            now = time.monotonic()
            if now - self._at < self.ttl:
                return self._last
            try:
                ok = await self.client.service_client.check_health(timeout=READY_TIMEOUT)
                self._last = (ok, "Temporal is serving" if ok else "Temporal's workflow service is not serving")
            except Exception as exc:
                self._last = (False, f"Temporal unreachable: {_first_line(exc)}")
            self._at = time.monotonic()
            return self._last


def create_app(
    client: Client,
    token: str,
    *,
    max_body: int | None = None,
    limits: Limits | None = None,
    routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The receiver's ASGI app: `POST /alertmanager`, `GET /healthz`, `/readyz`, `/metrics`,
    plus any `routes` given (mounted on the same app, e.g. the approval inbox)."""
    if not token.strip():
        raise ValueError("the receiver needs a bearer token (ROLLOUT_RECEIVER_TOKEN)")
    limits = limits or Limits()
    if max_body is not None:
        limits = dataclasses.replace(limits, max_body=max_body)
    secret = token.strip().encode("utf-8")
    metrics = _Metrics()
    readiness = TemporalReadiness(client)

    async def handle(request: Request) -> Response:
        try:
            if not _authorized(request, secret):
                return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
            try:
                raw = await _read_body(request, limits.max_body)
            except _TooLarge:
                return _error(413, f"body larger than {limits.max_body} bytes")
            except ValueError as exc:
                return _error(400, str(exc))
            except ClientDisconnect:
                return _error(400, "client disconnected")
            try:
                body = parse_body(raw)
            except ValueError as exc:
                return _error(400, str(exc))
            outcome = await deliver(client, body, limits, metrics)
            return JSONResponse(outcome.body(), status_code=outcome.status_code())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("receiver failed on a request")
            metrics.errors.labels("500").inc()
            return _error(500, "internal error; see the receiver's log")

    async def alertmanager(request: Request) -> Response:
        response = await handle(request)
        metrics.requests.labels("/alertmanager", str(response.status_code)).inc()
        return response

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(request: Request) -> Response:
        ok, reason = await readiness.check()
        return JSONResponse({"ready": ok, "reason": reason}, status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/alertmanager", alertmanager, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            *routes,
        ]
    )
    app.state.metrics_registry = metrics.registry
    app.state.limits = limits
    return app


async def serve(client: Client, token: str, host: str, port: int, *, log_level: str = "warning") -> None:
    """Serve the receiver until cancelled (no signal handlers: the caller owns Ctrl-C).

    The socket is bound before the server starts, so a port in use raises OSError here.
    """
    import uvicorn

    from worker.inbox import inbox_routes

    app = create_app(client, token, routes=inbox_routes(client))
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
