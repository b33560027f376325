"""The approval inbox: `/inbox` on the receiver's port, for people who do not live in a terminal.

For the signed-in identity it lists what waits on them (stage entries awaiting an
approval they may give, pending amendments, open escalations and handoff items they may
acknowledge) and every open rollout's status, read-only. Approve, reject and acknowledge
go through the same Updates as the CLI (worker/client.py) with that identity: the
workflow is the judge, and a refusal is shown with its reason. Buttons are only a hint
of what the workflow would accept, decided from the plan with the same rules.

Sign-in:
- behind an authenticating proxy: `X-Auth-Request-Email`, trusted only when the request
  comes from `ROLLOUT_INBOX_TRUSTED_PROXY`;
- otherwise a link from `rollout inbox link --as ID [--ttl 8h]`: HMAC-signed with
  `ROLLOUT_INBOX_SECRET`, expiring, single use (used link ids are kept in
  `inbox.db` in the state directory); redeeming it sets an HttpOnly, SameSite=Strict
  session cookie. Every form carries a CSRF token bound to the session.

Rollouts are read by listing open StagedRollout executions (visibility) and querying
`status`, with bounded concurrency, cached for a moment. The plan behind a `plan_hash`
(who approves what) comes from `status.plan` when the workflow gives it, else from the
workflow's history (its input, and `amend` messages), cached per hash.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import difflib
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode

import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client
from temporalio.service import RPCError

from rollout.errors import PlanError, RolloutError
from rollout.plan import Plan, validate_plan_data
from rollout.statedir import state_dir_from
from worker import client as rc
from worker.connect import WORKFLOW_TYPE

log = logging.getLogger("rollout.inbox")

SECRET_ENV = "ROLLOUT_INBOX_SECRET"  # noqa: S105 - the variable's name
PROXY_ENV = "ROLLOUT_INBOX_TRUSTED_PROXY"
PUBLIC_URL_ENV = "ROLLOUT_PUBLIC_URL"
PROXY_HEADER = "x-auth-request-email"
SESSION_COOKIE = "rollout_inbox"
SESSION_TTL = timedelta(hours=12)
DEFAULT_LINK_TTL = timedelta(hours=8)
MAX_LINK_TTL = timedelta(days=7)
MAX_FORM_BYTES = 64 * 1024
POLL_SECONDS = 5
HERE = Path(__file__).parent

# ---- signed tokens: sign-in links and sessions ------------------------------------------


class SignInRefused(Exception):
    """A link or session that does not sign anyone in; the message says why."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_token(secret: bytes, purpose: str, claims: Mapping[str, Any]) -> str:
    """`<claims>.<HMAC-SHA256>`; `purpose` separates links from sessions."""
    body = _b64(json.dumps(dict(claims), sort_keys=True, separators=(",", ":")).encode())
    mac = hmac.new(secret, f"{purpose}.{body}".encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def verify_token(secret: bytes, purpose: str, token: str, now: float) -> dict[str, Any]:
    body, _, mac = token.partition(".")
    try:
        given = _unb64(mac)
        claims = json.loads(_unb64(body))
    except (ValueError, UnicodeDecodeError):
        raise SignInRefused("this link is damaged; ask for a new one") from None
    expected = hmac.new(secret, f"{purpose}.{body}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(given, expected) or not isinstance(claims, dict):
        raise SignInRefused("this link was not signed by this inbox; ask for a new one")
    if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("exp"), int | float):
        raise SignInRefused("this link is damaged; ask for a new one")
    if claims["exp"] <= now:
        raise SignInRefused("this link has expired; ask for a new one (rollout inbox link --as YOU)")
    return claims


def public_url_from_env(default_port: int = 9095) -> str:
    return (os.environ.get(PUBLIC_URL_ENV) or f"http://127.0.0.1:{default_port}").rstrip("/")


def sign_in_link(secret: bytes, identity: str, ttl: timedelta, public_url: str, now: float | None = None) -> str:
    """A single-use link that signs `identity` in until `ttl` from now."""
    if not identity.strip() or any(c.isspace() for c in identity):
        raise ValueError(f"identity {identity!r} must be a single identity without spaces")
    if ttl <= timedelta(0) or ttl > MAX_LINK_TTL:
        raise ValueError(f"--ttl must be between 1s and {MAX_LINK_TTL.days}d")
    issued = time.time() if now is None else now
    claims = {"sub": identity, "exp": int(issued + ttl.total_seconds()), "jti": secrets.token_hex(16), "iat": int(issued)}
    return f"{public_url.rstrip('/')}/inbox/login?{urlencode({'token': sign_token(secret, 'link', claims)})}"


class UsedLinks:
    """Ids of redeemed sign-in links (a small SQLite table), so each link works once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _claim(self, jti: str, identity: str, expires: float) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as db, db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS used_links (jti TEXT PRIMARY KEY, identity TEXT NOT NULL, "
                "used_at REAL NOT NULL, expires_at REAL NOT NULL)"
            )
            now = time.time()
            db.execute("DELETE FROM used_links WHERE expires_at < ?", (now - 86400,))
            try:
                db.execute("INSERT INTO used_links VALUES (?, ?, ?, ?)", (jti, identity, now, expires))
            except sqlite3.IntegrityError:
                return False
            return True

    async def claim(self, jti: str, identity: str, expires: float) -> bool:
        """True the first time a link id is redeemed, False ever after."""
        return await asyncio.to_thread(self._claim, jti, identity, expires)


# ---- reading rollouts ---------------------------------------------------------------------


@dataclass
class RolloutInfo:
    workflow_id: str
    status: dict[str, Any] | None
    error: str | None = None
    plan: Plan | None = None
    amended_plan: Plan | None = None


def _payload_json(payloads: Payloads) -> Any:
    if not payloads.payloads:
        return None
    try:
        return json.loads(payloads.payloads[0].data)
    except (ValueError, UnicodeDecodeError):
        return None


class PlanCache:
    """Plans by workflow id and plan hash, read from the workflow's history once."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._plans: dict[str, dict[str, Plan]] = {}
        self._scanned: dict[str, float] = {}
        self._lock = asyncio.Lock()

    @staticmethod
    def _add(found: dict[str, Plan], data: Any) -> None:
        if not isinstance(data, dict):
            return
        with contextlib.suppress(PlanError, ValueError, TypeError):
            plan = validate_plan_data(data)
            found[plan.plan_hash()] = plan

    async def _scan(self, wid: str) -> dict[str, Plan]:
        found: dict[str, Plan] = {}
        async for event in self.client.get_workflow_handle(wid).fetch_history_events():
            if event.HasField("workflow_execution_started_event_attributes"):
                doc = _payload_json(event.workflow_execution_started_event_attributes.input)
                if isinstance(doc, dict):
                    self._add(found, doc.get("plan"))
                    state = doc.get("state")
                    if isinstance(state, dict):
                        self._add(found, state.get("plan"))
                        pending = state.get("pending_amendment")
                        if isinstance(pending, dict):
                            self._add(found, pending.get("plan"))
            elif event.HasField("workflow_execution_update_accepted_event_attributes"):
                req = event.workflow_execution_update_accepted_event_attributes.accepted_request
                if req.input.name == "amend":
                    doc = _payload_json(req.input.args)
                    if isinstance(doc, dict):
                        self._add(found, doc.get("plan"))
            elif event.HasField("workflow_execution_signaled_event_attributes"):
                attrs = event.workflow_execution_signaled_event_attributes
                if attrs.signal_name == "amend":
                    doc = _payload_json(attrs.input)
                    if isinstance(doc, dict):
                        self._add(found, doc.get("plan"))
        return found

    async def get(self, wid: str, plan_hash: str | None) -> Plan | None:
        if not plan_hash:
            return None
        known = self._plans.get(wid, {})
        if plan_hash in known:
            return known[plan_hash]
        async with self._lock:
            known = self._plans.setdefault(wid, {})
            if plan_hash not in known and time.monotonic() - self._scanned.get(wid, -1e9) > 2.0:
                try:
                    known.update(await self._scan(wid))
                except RPCError as exc:
                    log.warning("cannot read the plan of %s from its history: %s", wid, exc.message)
                self._scanned[wid] = time.monotonic()
            return known.get(plan_hash)


class RolloutReader:
    """Open rollouts and their `status`.

    A page never waits for a refresh once something has been read: results older than
    `ttl` seconds are served while one background refresh runs (stale for at most the
    time one refresh takes). Only the first read, and the first after an action
    (`invalidate`), waits for fresh results.
    """

    def __init__(self, client: Client, *, ttl: float = 2.0, concurrency: int = 16, limit: int = 5000) -> None:
        self.client = client
        self.ttl = ttl
        self.limit = limit
        self.plans = PlanCache(client)
        self._sem = asyncio.Semaphore(concurrency)
        self._lock = asyncio.Lock()
        self._at = -1e9
        self._items: list[RolloutInfo] | None = None
        self._must_wait = True
        self._background: asyncio.Task[None] | None = None

    def invalidate(self) -> None:
        self._must_wait = True

    async def _one(self, wid: str) -> RolloutInfo:
        async with self._sem:
            try:
                st: dict[str, Any] = await self.client.get_workflow_handle(wid).query(
                    "status", result_type=dict, rpc_timeout=timedelta(seconds=5)
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
                return RolloutInfo(wid, None, error=f"status unavailable: {first}")
            info = RolloutInfo(wid, st)
            if _needs_plan(st):
                info.plan = _plan_in_status(st) or await self.plans.get(wid, st.get("plan_hash"))
                pending = st.get("pending_amendment")
                if isinstance(pending, dict):
                    info.amended_plan = await self.plans.get(wid, pending.get("plan_hash"))
            return info

    async def _refresh(self) -> list[RolloutInfo]:
        async with self._lock:
            if time.monotonic() - self._at < self.ttl and not self._must_wait and self._items is not None:
                return self._items
            self._must_wait = False
            started = time.monotonic()
            query = f"WorkflowType = '{WORKFLOW_TYPE}' AND ExecutionStatus = 'Running'"
            ids: list[str] = []
            async for wf in self.client.list_workflows(query, limit=self.limit):
                ids.append(wf.id)
            items = await asyncio.gather(*(self._one(wid) for wid in dict.fromkeys(ids)))
            self._items = sorted(items, key=lambda i: i.workflow_id)
            self._at = started
            return self._items

    async def _refresh_quietly(self) -> None:
        try:
            await self._refresh()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("inbox refresh failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    async def snapshot(self) -> list[RolloutInfo]:
        if self._items is None or self._must_wait:
            return await self._refresh()
        if time.monotonic() - self._at >= self.ttl and (self._background is None or self._background.done()):
            self._background = asyncio.create_task(self._refresh_quietly())
        return self._items


def _plan_in_status(st: Mapping[str, Any]) -> Plan | None:
    data = st.get("plan")
    if isinstance(data, dict):
        with contextlib.suppress(PlanError, ValueError, TypeError):
            return validate_plan_data(data)
    return None


def _awaiting_approval(st: Mapping[str, Any]) -> bool:
    if st.get("status") == "awaiting_approval":
        return True
    hold = st.get("hold")
    return st.get("status") == "held" and isinstance(hold, dict) and hold.get("interrupted") == "awaiting_approval"


def _needs_plan(st: Mapping[str, Any]) -> bool:
    return _awaiting_approval(st) or bool(st.get("pending_amendment"))


# ---- what waits on whom (hints; the workflow decides) ----------------------------------------


@dataclass
class Change:
    what: str
    before: str
    after: str


@dataclass
class ApprovalItem:
    workflow_id: str
    name: str
    stage: str
    tier: str
    roles: list[str]
    entry: int | None
    awaiting_since: str | None
    given: dict[str, str]
    missing: dict[str, list[str]]
    scope: list[Change]
    authority: list[Change]
    plan_changes: list[str]
    previous_stage: str | None
    window_clean: bool | None
    coverage: dict[str, float]
    breaches: list[dict[str, Any]]
    signed: bool
    commands: list[str]
    may_reject: bool


@dataclass
class AmendmentItem:
    workflow_id: str
    name: str
    plan_hash: str
    proposed_by: str
    proposed_at: str | None
    roles: list[str]
    diff: list[str]
    signed: bool
    commands: list[str]


@dataclass
class EscalationItem:
    workflow_id: str
    name: str
    status: str
    reason: str
    level: int | None
    paged: list[str]
    since: str | None
    next_page_at: str | None


@dataclass
class HandoffTask:
    workflow_id: str
    name: str
    stage: str
    item: str
    to: str
    signed: bool
    command: str | None


@dataclass
class OwnedItem:
    workflow_id: str
    name: str
    stage: str
    status: str
    missing: dict[str, list[str]]


@dataclass
class RolloutRow:
    workflow_id: str
    name: str
    stage: str
    status: str
    exposure: str
    window_ends_at: str | None
    missing: list[str]
    escalation: str | None
    owner: str
    error: str | None = None


@dataclass
class InboxView:
    identity: str
    approvals: list[ApprovalItem] = field(default_factory=list)
    amendments: list[AmendmentItem] = field(default_factory=list)
    escalations: list[EscalationItem] = field(default_factory=list)
    handoffs: list[HandoffTask] = field(default_factory=list)
    owned: list[OwnedItem] = field(default_factory=list)
    rollouts: list[RolloutRow] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        return len(self.approvals) + len(self.amendments) + len(self.escalations) + len(self.handoffs)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _given_actors(given: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(given, dict):
        for role, rec in given.items():
            actor = rec.get("actor") if isinstance(rec, dict) else rec
            if isinstance(actor, str):
                out[str(role)] = actor
    return out


def may_approve(plan: Plan, role: str, me: str, given: Mapping[str, str]) -> bool:
    """The workflow's approval rules, as a hint for showing a button."""
    if me == plan.owners.rollout or me not in plan.approvers.get(role, []) or role in given:
        return False
    if me in given.values():
        return False
    owners = plan.owners.by_key()
    for other in plan.distinct_from.get(role, []):
        if owners.get(other) == me or given.get(other) == me:
            return False
    return True


def _scope_text(percent: float, segments: list[str] | None) -> str:
    return f"{percent:g}% of " + (", ".join(segments) if segments else "all segments")


def _stage_changes(plan: Plan, index: int) -> tuple[list[Change], list[Change], list[str]]:
    stage = plan.stages[index]
    prev = plan.stages[index - 1] if index > 0 else None
    scope = [Change("scope", _scope_text(prev.scope.percent, prev.scope.segments) if prev else "nothing exposed",
                    _scope_text(stage.scope.percent, stage.scope.segments))]
    before = plan.effective_authority(index - 1) if prev else {}
    after = plan.effective_authority(index)
    authority = [Change(verb, before.get(verb, "-"), level) for verb, level in after.items() if before.get(verb) != level]
    notes: list[str] = []
    if prev is None:
        notes.append(f"first stage: {stage.tier}, window {stage.window}")
    else:
        if prev.window != stage.window:
            notes.append(f"window {prev.window} → {stage.window}")
        prev_t = {t.name: t for t in prev.thresholds}
        for t in stage.thresholds:
            old = prev_t.get(t.name)
            bounds = " ".join(x for x in (f"max {t.max:g}" if t.max is not None else "", f"min {t.min:g}" if t.min is not None else "") if x)
            if old is None:
                notes.append(f"threshold {t.name} added ({bounds}, for {t.for_}, action {t.action})")
            elif old.model_dump() != t.model_dump():
                notes.append(f"threshold {t.name} changed ({bounds}, for {t.for_}, action {t.action})")
        for name in prev_t.keys() - {t.name for t in stage.thresholds}:
            notes.append(f"threshold {name} no longer evaluated")
    if stage.handoff:
        notes.append("handoff before leaving: " + "; ".join(f"{h.item} ({h.to})" for h in stage.handoff))
    return scope, authority, notes


def _plan_yaml(plan: Plan) -> list[str]:
    text = yaml.safe_dump(plan.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False, width=100)
    return text.splitlines()


def plan_diff(old: Plan, new: Plan) -> list[str]:
    return list(difflib.unified_diff(_plan_yaml(old), _plan_yaml(new), "current plan", "amended plan", lineterm="", n=2))


def _who_missing(plan: Plan | None, roles: list[str]) -> dict[str, list[str]]:
    """Who may still give each missing role (the rollout owner never approves their own)."""
    if plan is None:
        return {r: [] for r in roles}
    return {r: [x for x in plan.approvers.get(r, []) if x != plan.owners.rollout] for r in roles}


def build_view(me: str, rollouts: list[RolloutInfo]) -> InboxView:
    view = InboxView(identity=me)
    for info in rollouts:
        st = info.status
        if st is None:
            view.rollouts.append(RolloutRow(info.workflow_id, info.workflow_id, "-", "unknown", "-", None, [], None, "-", info.error))
            continue
        wid = str(st.get("workflow_id") or info.workflow_id)
        name = str(st.get("name") or wid)
        owners = _dict(st.get("owners"))
        approvals = _dict(st.get("approvals"))
        missing = [str(r) for r in approvals.get("missing") or []]
        given = _given_actors(approvals.get("given"))
        esc = (_dict(st.get("escalation")) or None)
        open_esc = esc is not None and not esc.get("acknowledged_by")
        exposure = _dict(st.get("exposure"))
        view.rollouts.append(
            RolloutRow(
                workflow_id=wid,
                name=name,
                stage=str(st.get("stage")),
                status=str(st.get("status")),
                exposure=(f"{exposure.get('percent', 0):g}% ({st.get('exposure_stage')})" if st.get("exposure_stage") else "none"),
                window_ends_at=st.get("window_ends_at"),
                missing=missing if _awaiting_approval(st) else [],
                escalation=(f"open, level {esc.get('level')}" if open_esc and esc else None),
                owner=str(owners.get("rollout", "-")),
            )
        )
        plan = info.plan
        signed = bool(plan and plan.require_signed_approvals)
        awaited = str(approvals.get("stage") or st.get("stage"))
        if _awaiting_approval(st) and plan is not None and plan.stage_index(awaited) is not None:
            index = plan.stage_index(awaited)
            assert index is not None
            mine = [r for r in missing if may_approve(plan, r, me, given)]
            listed = any(me in plan.approvers.get(r, []) for r in plan.stages[index].approvals.roles)
            if mine:
                scope, authority, notes = _stage_changes(plan, index)
                coverage = _dict(st.get("window_coverage"))
                view.approvals.append(
                    ApprovalItem(
                        workflow_id=wid, name=name, stage=awaited, tier=plan.stages[index].tier, roles=mine,
                        entry=approvals.get("entry") if isinstance(approvals.get("entry"), int) else None,
                        awaiting_since=approvals.get("awaiting_since"), given=given,
                        missing=_who_missing(plan, missing), scope=scope, authority=authority, plan_changes=notes,
                        previous_stage=plan.stages[index - 1].name if index > 0 else None,
                        window_clean=st.get("exposure_clean") if index > 0 else None,
                        coverage={str(k): float(v) for k, v in coverage.items() if isinstance(v, int | float)},
                        breaches=[b for b in st.get("open_breaches") or [] if isinstance(b, dict)],
                        signed=signed,
                        commands=[f"rollout approve {wid} --stage {awaited} --role {r} --key YOUR_KEY_FILE --as {me}" for r in mine],
                        may_reject=listed or me == plan.owners.rollout,
                    )
                )
            if me == plan.owners.rollout and missing:
                view.owned.append(OwnedItem(wid, name, awaited, str(st.get("status")), _who_missing(plan, missing)))
        pending = (_dict(st.get("pending_amendment")) or None)
        if pending and plan is not None:
            amend_given = _given_actors(pending.get("approvals"))
            roles = [r for r in pending.get("missing") or [] if may_approve(plan, str(r), me, amend_given)]
            if roles:
                h = str(pending.get("plan_hash"))
                diff = plan_diff(plan, info.amended_plan) if info.amended_plan else ["(the amended plan could not be read)"]
                view.amendments.append(
                    AmendmentItem(
                        workflow_id=wid, name=name, plan_hash=h, proposed_by=str(pending.get("proposed_by")),
                        proposed_at=pending.get("proposed_at"), roles=roles, diff=diff, signed=signed,
                        commands=[f"rollout approve {wid} --amendment {h} --role {r} --key YOUR_KEY_FILE --as {me}" for r in roles],
                    )
                )
        if open_esc and esc is not None and me in (owners.get("incident_response"), owners.get("rollout")):
            pages = [p for p in esc.get("pages") or [] if isinstance(p, dict)]
            paged = sorted({str(x) for p in pages for x in p.get("recipients") or []})
            view.escalations.append(
                EscalationItem(wid, name, str(st.get("status")), str(esc.get("reason", "")), esc.get("level"), paged,
                               esc.get("started_at"), esc.get("next_page_at"))
            )
        for h in st.get("pending_handoff") or []:
            if isinstance(h, dict) and me in (h.get("identities") or []):
                item = str(h.get("item"))
                view.handoffs.append(
                    HandoffTask(wid, name, str(h.get("stage")), item, str(h.get("to")), signed,
                                f"rollout ack {wid} --item {json.dumps(item)} --key YOUR_KEY_FILE --as {me}" if signed else None)
                )
    return view


# ---- the web app --------------------------------------------------------------------------


@dataclass
class Identity:
    name: str
    csrf: str
    flash_key: str
    via: Literal["proxy", "link"]


@dataclass
class Flash:
    kind: Literal["done", "refused"]
    text: str


@dataclass
class InboxConfig:
    secret: bytes
    trusted_proxy: str | None
    public_url: str | None  # None: http://127.0.0.1:<the port the request came to>
    state_dir: Path
    poll_seconds: int = POLL_SECONDS

    @classmethod
    def from_env(cls) -> InboxConfig:
        raw = os.environ.get(SECRET_ENV, "")
        if raw.strip():
            secret = raw.strip().encode()
        else:  # sign-in links cannot work without the shared secret; the proxy header still does
            secret = secrets.token_bytes(32)
            log.warning("%s is not set: sign-in links are refused (a trusted proxy still signs people in)", SECRET_ENV)
        return cls(
            secret=secret,
            trusted_proxy=(os.environ.get(PROXY_ENV) or "").strip() or None,
            public_url=(os.environ.get(PUBLIC_URL_ENV) or "").strip().rstrip("/") or None,
            state_dir=state_dir_from(os.environ, Path.home()).absolute(),
        )


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v: f"{float(v) * 100:.0f}%"
    return env


TEMPLATES = _templates()

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


class Inbox:
    def __init__(self, client: Client, config: InboxConfig, *, reader: RolloutReader | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.config = config
        self.reader = reader or RolloutReader(client)
        self.used = UsedLinks(config.state_dir / "inbox.db")
        self.clock = clock
        self._flash: dict[str, list[Flash]] = {}

    # -- helpers
    def public_url(self, request: Request) -> str:
        return self.config.public_url or f"http://127.0.0.1:{request.url.port or 80}"

    def _csrf(self, kind: str, key: str) -> str:
        return hmac.new(self.config.secret, f"csrf.{kind}.{key}".encode(), hashlib.sha256).hexdigest()[:40]

    def identity(self, request: Request) -> Identity | None:
        client_host = request.client.host if request.client else None
        if self.config.trusted_proxy and client_host == self.config.trusted_proxy:
            email = (request.headers.get(PROXY_HEADER) or "").strip()
            if email and not any(c.isspace() for c in email):
                return Identity(email, self._csrf("proxy", email), f"proxy:{email}", "proxy")
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            try:
                claims = verify_token(self.config.secret, "session", cookie, self.clock())
            except SignInRefused:
                return None
            sid = str(claims.get("sid", ""))
            return Identity(str(claims["sub"]), self._csrf("session", sid), f"session:{sid}", "link")
        return None

    def render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = TEMPLATES.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)

    def _page_context(
        self, request: Request, me: Identity, view: InboxView, elapsed_ms: float, *, consume: bool = True
    ) -> dict[str, Any]:
        """`consume`: a page load takes the messages; the page's background refresh only
        shows them (it can run between an action storing its message and the redirect that
        follows it, and would otherwise take the message from the page the person sees)."""
        flashes = self._flash.pop(me.flash_key, []) if consume else list(self._flash.get(me.flash_key, []))
        return {
            "view": view,
            "me": me,
            "csrf": me.csrf,
            "flashes": flashes,
            "public_url": self.public_url(request),
            "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "elapsed_ms": elapsed_ms,
            "poll_seconds": self.config.poll_seconds,
        }

    async def _view(self, me: Identity) -> tuple[InboxView, float]:
        started = time.perf_counter()
        view = build_view(me.name, await self.reader.snapshot())
        return view, (time.perf_counter() - started) * 1000

    # -- routes
    async def page(self, request: Request) -> Response:
        me = self.identity(request)
        if me is None:
            return self.render("signin.html", 401, public_url=self.public_url(request), reason=None)
        view, ms = await self._view(me)
        return self.render("inbox.html", **self._page_context(request, me, view, ms))

    async def fragment(self, request: Request) -> Response:
        me = self.identity(request)
        if me is None:
            return Response("signed out", status_code=401, headers=_SECURITY_HEADERS)
        view, ms = await self._view(me)
        return self.render("_content.html", **self._page_context(request, me, view, ms, consume=False))

    async def login_form(self, request: Request) -> Response:
        token = request.query_params.get("token", "")
        try:
            claims = verify_token(self.config.secret, "link", token, self.clock())
        except SignInRefused as exc:
            return self.render("signin.html", 403, public_url=self.public_url(request), reason=str(exc))
        return self.render("login.html", identity=claims["sub"], token=token)

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        token = form.get("token", "")
        try:
            claims = verify_token(self.config.secret, "link", token, self.clock())
            if not await self.used.claim(str(claims.get("jti", "")), str(claims["sub"]), float(claims["exp"])):
                raise SignInRefused("this link was already used; each link signs in once (ask for a new one)")
        except SignInRefused as exc:
            return self.render("signin.html", 403, public_url=self.public_url(request), reason=str(exc))
        session = sign_token(
            self.config.secret, "session",
            {"sub": claims["sub"], "exp": int(self.clock() + SESSION_TTL.total_seconds()), "sid": secrets.token_hex(16)},
        )
        response = RedirectResponse("/inbox", status_code=303, headers=_SECURITY_HEADERS)
        response.set_cookie(
            SESSION_COOKIE, session, max_age=int(SESSION_TTL.total_seconds()), path="/inbox", httponly=True,
            samesite="strict", secure=self.public_url(request).startswith("https://"),
        )
        return response

    async def logout(self, request: Request) -> Response:
        me = self.identity(request)
        form = await _form(request)
        if me is None or not hmac.compare_digest(form.get("csrf", ""), me.csrf):
            return self.render("signin.html", 403, public_url=self.public_url(request),
                               reason="refused: the form's CSRF token is missing or wrong")
        response = RedirectResponse("/inbox", status_code=303, headers=_SECURITY_HEADERS)
        response.delete_cookie(SESSION_COOKIE, path="/inbox", httponly=True, samesite="strict")
        return response

    async def act(self, request: Request) -> Response:
        me = self.identity(request)
        if me is None:
            return self.render("signin.html", 401, public_url=self.public_url(request), reason="you are not signed in")
        form = await _form(request)
        if not hmac.compare_digest(form.get("csrf", ""), me.csrf):
            return self.render("refused.html", 403, reason="refused: the form's CSRF token is missing or wrong; "
                               "reload the inbox and try again")
        wid = form.get("rollout", "")
        action = form.get("action", "")
        payload, problem = action_payload(me.name, action, form)
        if problem is not None or not wid:
            self._say(me, Flash("refused", problem or "no rollout named"))
        else:
            try:
                await rc.act(self.client, wid, action, payload)
            except RolloutError as exc:
                self._say(me, Flash("refused", f"{wid}: {action} refused: {exc.message}"))
            else:
                self._say(me, Flash("done", f"{wid}: {describe(action, payload)}"))
            self.reader.invalidate()
        return RedirectResponse("/inbox", status_code=303, headers=_SECURITY_HEADERS)

    def _say(self, me: Identity, flash: Flash) -> None:
        messages = self._flash.setdefault(me.flash_key, [])
        messages.append(flash)
        del messages[:-5]
        if len(self._flash) > 1000:  # bounded: forget the oldest sessions' messages
            for key in list(self._flash)[: len(self._flash) - 1000]:
                del self._flash[key]

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/inbox", self.page, methods=["GET"]),
            Route("/inbox/fragment", self.fragment, methods=["GET"]),
            Route("/inbox/login", self.login_form, methods=["GET"]),
            Route("/inbox/login", self.login, methods=["POST"]),
            Route("/inbox/logout", self.logout, methods=["POST"]),
            Route("/inbox/act", self.act, methods=["POST"]),
            Mount("/inbox/static", app=StaticFiles(directory=HERE / "static"), name="inbox-static"),
        ]


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (bounded), first value per field."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return {}
        chunks.append(chunk)
    try:
        parsed = parse_qs(b"".join(chunks).decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in parsed.items() if v}


def action_payload(actor: str, action: str, form: Mapping[str, str]) -> tuple[dict[str, Any], str | None]:
    """The Update payload a form asks for (the same as the CLI sends), or a problem."""
    comment = form.get("comment", "").strip()[:2000] or None
    if action == "approve":
        role = form.get("role", "")
        if form.get("amendment"):
            return {"actor": actor, "amendment": form["amendment"], "role": role, "comment": comment}, None
        return {"actor": actor, "stage": form.get("stage", ""), "role": role, "comment": comment}, None
    if action == "reject":
        reason = form.get("reason", "").strip()[:2000]
        if not reason:
            return {}, "a rejection needs a reason"
        payload: dict[str, Any] = {"actor": actor, "stage": form.get("stage", ""), "reason": reason}
        if form.get("role"):
            payload["role"] = form["role"]
        return payload, None
    if action == "acknowledge":
        if form.get("escalation") == "true":
            return {"actor": actor, "escalation": True, "comment": comment}, None
        return {"actor": actor, "item": form.get("item", ""), "comment": comment}, None
    return {}, f"unknown action {action[:40]!r}"


def describe(action: str, payload: Mapping[str, Any]) -> str:
    if action == "approve" and payload.get("amendment"):
        return f"amendment {str(payload['amendment'])[:12]} approved as {payload.get('role')}"
    if action == "approve":
        return f"{payload.get('stage')} approved as {payload.get('role')}"
    if action == "reject":
        return f"{payload.get('stage')} rejected"
    if payload.get("escalation"):
        return "escalation acknowledged"
    return f"handoff item acknowledged: {payload.get('item')}"


def inbox_routes(client: Client, config: InboxConfig | None = None) -> list[BaseRoute]:
    """The inbox's routes, to mount in the receiver's app."""
    return Inbox(client, config or InboxConfig.from_env()).routes()
