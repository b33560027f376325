"""The plan: a one-page operating model for a staged rollout, validated by pydantic.

`load_plan(path)` / `parse_plan(text)` turn YAML into a `Plan` or raise `PlanError`
with one `path: message` line per problem (with the YAML line where known).
Structural rules live on the pydantic models; rules that relate fields to each
other (tier order, scope never shrinks, authority only widens, roles exist) live
in `semantic_problems` so that every problem is reported at its own path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
)

from rollout.durations import parse_duration
from rollout.errors import PlanError

NAME_RE = r"^[a-z0-9-]{1,63}$"
TIERS = ("pilot", "limited", "system_of_record")
LEVELS = ("forbid", "review", "auto")  # strictest first
OWNER_KEYS = ("rollout", "workflow", "incident_response")


MAX_DURATION = timedelta(days=365)


def _check_duration(v: str) -> str:
    try:
        d = parse_duration(v)
    except OverflowError:  # e.g. '99999999999999d': beyond what a timedelta can hold
        raise ValueError(f"duration {v!r} is too long: at most 365d") from None
    if d > MAX_DURATION:
        raise ValueError(f"duration {v!r} is too long: at most 365d")
    return v


def _check_identity(v: str) -> str:
    if not v or v != v.strip() or any(c.isspace() for c in v):
        raise ValueError(f"identity {v!r} must be a single identity without spaces")
    return v


Duration = Annotated[str, AfterValidator(_check_duration)]
Identity = Annotated[str, AfterValidator(_check_identity)]
Level = Literal["auto", "review", "forbid"]
Action = Literal["hold", "narrow", "rollback"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)


class Owners(_Model):
    rollout: Identity
    workflow: Identity | None = None
    incident_response: Identity

    def by_key(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class WebhookTarget(_Model):
    kind: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    secret_env: str | None = None
    timeout: Duration = "10s"


class FileTarget(_Model):
    kind: Literal["file"]
    path: Annotated[str, Field(min_length=1)]
    flag: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")] | None = None


class UnleashTarget(_Model):
    kind: Literal["unleash"]
    url: Annotated[str, Field(pattern=r"^https?://")]
    token_env: Annotated[str, Field(min_length=1)]
    feature: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")] | None = None
    project: str = "default"
    environment: str = "development"


class LogTarget(_Model):
    kind: Literal["log"]
    path: str | None = None


Target = Annotated[
    WebhookTarget | FileTarget | UnleashTarget | LogTarget, Field(discriminator="kind")
]


class Metrics(_Model):
    prometheus_url: Annotated[str, Field(pattern=r"^https?://")]
    interval: Duration = "30s"


class Escalation(_Model):
    ack_within: Duration
    chain: Annotated[list[str], Field(min_length=1)]
    max_hold: Duration | None = None


NOTIFIER_KINDS = ("webhook", "slack", "teams", "pagerduty", "email")
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


def _check_env_name(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", v):
        raise ValueError("must be the name of an environment variable (letters, digits, _), never the secret itself")
    return v


def _check_http_url(v: str) -> str:
    if not re.match(r"^https?://[^/\s]+", v) or any(c.isspace() for c in v):
        raise ValueError(f"must be an http:// or https:// URL, got {v[:60]!r}")
    return v


def _check_smtp_url(v: str) -> str:
    if not re.fullmatch(r"smtps?://[^/?#\s@:]+(:[0-9]{1,5})?/?", v):
        raise ValueError(
            "must be smtp://HOST[:PORT] or smtps://HOST[:PORT], without credentials "
            "(they come from the environment: username_env, password_env)"
        )
    return v


EnvName = Annotated[str, AfterValidator(_check_env_name)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]


class WebhookNotifier(_Model):
    """Signed JSON notifications (docs/targets.md)."""

    kind: Literal["webhook"]
    url: HttpUrl
    secret_env: EnvName | None = None

    def destination(self) -> str:
        return self.url


class SlackNotifier(_Model):
    """A Slack incoming webhook."""

    kind: Literal["slack"]
    url: HttpUrl
    secret_env: EnvName | None = None  # kept for plans written before

    def destination(self) -> str:
        return self.url


class TeamsNotifier(_Model):
    """A Microsoft Teams workflow webhook ("When a Teams webhook request is received"): an Adaptive Card."""

    kind: Literal["teams"]
    url: HttpUrl

    def destination(self) -> str:
        return self.url


class PagerDutyNotifier(_Model):
    """PagerDuty Events API v2: escalation pages trigger, acknowledgements acknowledge, resumes resolve."""

    kind: Literal["pagerduty"]
    routing_key_env: EnvName
    url: HttpUrl = PAGERDUTY_EVENTS_URL
    severity: Literal["critical", "error", "warning", "info"] = "critical"

    def destination(self) -> str:
        return f"{self.url} (routing key from ${self.routing_key_env})"


def _check_address(v: str) -> str:
    local, at, domain = v.partition("@")
    if not at or not local or not domain or any(c.isspace() or c in "<>,;" for c in v):
        raise ValueError(f"{v!r} is not an email address")
    return v


def _check_mailboxes(v: list[str]) -> list[str]:
    if not v:
        raise ValueError("needs at least one address: the rollout owner's, who gets every containment and stage change")
    return v


class EmailNotifier(_Model):
    """Plain-text email over SMTP (STARTTLS whenever the server offers it).

    Pages go to the paged identities; every containment and stage change to `to` (the
    rollout owner's address, and anyone else who wants them). Credentials come from the
    environment variables named by `username_env` / `password_env`, never from the plan.
    """

    kind: Literal["email"]
    smtp_url: Annotated[str, AfterValidator(_check_smtp_url)]
    from_: Annotated[str, AfterValidator(_check_address), Field(alias="from")]
    to: Annotated[list[Annotated[str, AfterValidator(_check_address)]], AfterValidator(_check_mailboxes)]
    username_env: EnvName | None = None
    password_env: EnvName | None = None

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    def destination(self) -> str:
        return f"{self.smtp_url} from {self.from_} to {', '.join(self.to)}"


def _notifier_kind(v: Any) -> str | None:
    kind = v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)
    return kind if isinstance(kind, str) and kind in NOTIFIER_KINDS else None


Notifier = Annotated[
    Annotated[WebhookNotifier, Tag("webhook")]
    | Annotated[SlackNotifier, Tag("slack")]
    | Annotated[TeamsNotifier, Tag("teams")]
    | Annotated[PagerDutyNotifier, Tag("pagerduty")]
    | Annotated[EmailNotifier, Tag("email")],
    Discriminator(
        _notifier_kind,
        custom_error_type="notifier_kind",
        custom_error_message="'kind' must be one of: " + ", ".join(NOTIFIER_KINDS),
        custom_error_context={},
    ),
]


class Scope(_Model):
    percent: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
    segments: list[str] | None = None


class Approvals(_Model):
    roles: list[str] = Field(default_factory=list)
    remind_after: Duration | None = None


class Threshold(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")]
    query: Annotated[str, Field(min_length=1)]
    max: Annotated[float, Field(allow_inf_nan=False)] | None = None  # NaN would never breach
    min: Annotated[float, Field(allow_inf_nan=False)] | None = None
    for_: Annotated[int, Field(alias="for", ge=1)] = 1
    on_no_data: Literal["hold", "breach", "ignore"] = "hold"
    action: Action = "hold"

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class HandoffItem(_Model):
    item: Annotated[str, Field(min_length=1)]
    to: str


class Stage(_Model):
    name: Annotated[str, Field(pattern=NAME_RE)]
    tier: Literal["pilot", "limited", "system_of_record"]
    scope: Scope
    authority: dict[str, Level] = Field(default_factory=dict)
    approvals: Approvals = Field(default_factory=Approvals)
    window: Duration
    thresholds: list[Threshold] = Field(default_factory=list)
    handoff: list[HandoffItem] = Field(default_factory=list)


class Plan(_Model):
    apiVersion: Literal["rollout/v1"]
    name: Annotated[str, Field(pattern=NAME_RE)]
    description: str = ""
    owners: Owners
    approvers: dict[str, Annotated[list[Identity], Field(min_length=1)]]
    require_signed_approvals: bool = False
    public_keys: dict[str, str] = Field(default_factory=dict)
    distinct_from: dict[str, list[str]] = Field(default_factory=dict)
    target: Target
    metrics: Metrics | None = None
    fallback: Annotated[str, Field(min_length=1)]
    escalation: Escalation
    notify: list[Notifier] = Field(default_factory=list)
    stages: Annotated[list[Stage], Field(min_length=1)]

    # ---- derived views used by policy, workflow and CLI -------------------------

    def stage_index(self, name: str) -> int | None:
        for i, s in enumerate(self.stages):
            if s.name == name:
                return i
        return None

    def effective_authority(self, index: int) -> dict[str, str]:
        """Authority in force for stage `index`: each stage's verbs over the previous ones."""
        out: dict[str, str] = {}
        for s in self.stages[: index + 1]:
            out.update(s.authority)
        return out

    def role_identities(self, role: str) -> list[str]:
        """Identities behind a role name: an owner key or an approver role."""
        owners = self.owners.by_key()
        if role in owners:
            return [owners[role]]
        return list(self.approvers.get(role, []))

    def known_roles(self) -> list[str]:
        return sorted(set(self.owners.by_key()) | set(self.approvers))

    def everyone(self) -> set[str]:
        ids = set(self.owners.by_key().values())
        for members in self.approvers.values():
            ids.update(members)
        return ids

    def canonical_json(self) -> str:
        return canonical_json(self.model_dump(mode="json", by_alias=True))

    def plan_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ---- semantic rules ---------------------------------------------------------------

Problem = tuple[tuple[str | int, ...], str]


def _known(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def semantic_problems(plan: Plan) -> list[Problem]:
    """Rules that relate fields to each other; each problem names its own path."""
    problems: list[Problem] = []
    owner_keys = set(plan.owners.by_key())
    approver_roles = set(plan.approvers)
    any_role = owner_keys | approver_roles

    for role in sorted(approver_roles & set(OWNER_KEYS)):
        problems.append(
            (("approvers", role), f"role '{role}' clashes with an owner key; name it differently")
        )

    # tiers: pilot first, then limited..., then system_of_record last, each pilot/SoR once
    tiers = [s.tier for s in plan.stages]
    if tiers[0] != "pilot":
        problems.append((("stages", 0, "tier"), f"the first stage must be tier 'pilot', got '{tiers[0]}'"))
    if tiers[-1] != "system_of_record":
        problems.append(
            (
                ("stages", len(tiers) - 1, "tier"),
                f"the last stage must be tier 'system_of_record', got '{tiers[-1]}'",
            )
        )
    for i, tier in enumerate(tiers):
        if tier == "pilot" and i != 0:
            problems.append((("stages", i, "tier"), "tier 'pilot' may only be the first stage"))
        if tier == "system_of_record" and i != len(tiers) - 1:
            problems.append(
                (("stages", i, "tier"), "tier 'system_of_record' may only be the last stage")
            )
        if tier == "limited" and (i == 0 or i == len(tiers) - 1):
            problems.append(
                (("stages", i, "tier"), "tier 'limited' must come after the pilot and before system_of_record")
            )

    seen: dict[str, int] = {}
    for i, s in enumerate(plan.stages):
        if s.name in seen:
            problems.append((("stages", i, "name"), f"duplicate stage name '{s.name}' (also stages[{seen[s.name]}])"))
        else:
            seen[s.name] = i

    prev_effective: dict[str, str] = {}
    for i, s in enumerate(plan.stages):
        if i > 0:
            prev = plan.stages[i - 1]
            if s.scope.percent < prev.scope.percent:
                problems.append(
                    (
                        ("stages", i, "scope", "percent"),
                        f"scope shrinks: {s.scope.percent:g}% is lower than {prev.scope.percent:g}% in stage '{prev.name}'",
                    )
                )
            if prev.scope.segments is None and s.scope.segments is not None:
                problems.append(
                    (
                        ("stages", i, "scope", "segments"),
                        f"scope shrinks: stage '{prev.name}' covers all segments, this stage only {s.scope.segments}",
                    )
                )
            elif prev.scope.segments is not None and s.scope.segments is not None:
                missing = [x for x in prev.scope.segments if x not in s.scope.segments]
                if missing:
                    problems.append(
                        (
                            ("stages", i, "scope", "segments"),
                            f"scope shrinks: segments {missing} of stage '{prev.name}' are missing",
                        )
                    )
        for verb, level in s.authority.items():
            before = prev_effective.get(verb)
            if before is not None and LEVELS.index(level) < LEVELS.index(before):
                problems.append(
                    (
                        ("stages", i, "authority", verb),
                        f"authority only widens: '{verb}' is '{before}' in an earlier stage and may not become '{level}'",
                    )
                )
        prev_effective = {**prev_effective, **s.authority}

        for j, role in enumerate(s.approvals.roles):
            if role not in approver_roles:
                problems.append(
                    (
                        ("stages", i, "approvals", "roles", j),
                        f"unknown role '{role}' (known: {_known(approver_roles)})",
                    )
                )
            if role in s.approvals.roles[:j]:
                problems.append((("stages", i, "approvals", "roles", j), f"role '{role}' listed twice"))

        names: set[str] = set()
        for j, t in enumerate(s.thresholds):
            if t.max is None and t.min is None:
                problems.append((("stages", i, "thresholds", j), f"threshold '{t.name}' needs 'max', 'min' or both"))
            if t.max is not None and t.min is not None and t.min > t.max:
                problems.append((("stages", i, "thresholds", j, "min"), f"min {t.min:g} is above max {t.max:g}"))
            if t.name in names:
                problems.append((("stages", i, "thresholds", j, "name"), f"duplicate threshold name '{t.name}'"))
            names.add(t.name)
        if plan.metrics is not None and parse_duration(s.window) < parse_duration(plan.metrics.interval):
            problems.append(
                (
                    ("stages", i, "window"),
                    f"window {s.window} is shorter than metrics.interval ({plan.metrics.interval}): "
                    "a window must last at least one evaluation",
                )
            )
        if s.thresholds and plan.metrics is None:
            problems.append(
                (("stages", i, "thresholds"), "thresholds need 'metrics.prometheus_url' to be evaluated")
            )

        items: set[str] = set()
        for j, h in enumerate(s.handoff):
            if h.to not in any_role:
                problems.append(
                    (
                        ("stages", i, "handoff", j, "to"),
                        f"unknown role '{h.to}' (known: {_known(any_role)})",
                    )
                )
            if h.item in items:
                problems.append((("stages", i, "handoff", j, "item"), f"duplicate handoff item '{h.item}'"))
            items.add(h.item)
        if s.tier == "system_of_record" and not s.handoff:
            problems.append(
                (("stages", i, "handoff"), "the system_of_record stage needs at least one handoff item")
            )

    for j, role in enumerate(plan.escalation.chain):
        if role not in any_role:
            problems.append(
                (("escalation", "chain", j), f"unknown role '{role}' (known: {_known(any_role)})")
            )

    for role, others in plan.distinct_from.items():
        if role not in approver_roles:
            problems.append((("distinct_from", role), f"unknown role '{role}' (known: {_known(approver_roles)})"))
        for j, other in enumerate(others):
            if other not in any_role:
                problems.append(
                    (("distinct_from", role, j), f"unknown role '{other}' (known: {_known(any_role)})")
                )

    if plan.require_signed_approvals:
        approver_ids = {x for members in plan.approvers.values() for x in members}
        for ident in sorted(approver_ids):
            if ident not in plan.public_keys:
                problems.append(
                    (("public_keys",), f"require_signed_approvals is set but approver '{ident}' has no public key")
                )
    for ident, key in plan.public_keys.items():
        try:
            raw = base64.b64decode(key, validate=True)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            problems.append((("public_keys", ident), "not a base64 Ed25519 public key (32 bytes)"))
    return problems


# ---- loading ----------------------------------------------------------------------


def format_path(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(plan)"


def _line_index(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each path in a YAML document to the 1-based line where it starts."""
    lines: dict[tuple[str | int, ...], int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    seen: set[int] = set()

    def walk(node: yaml.Node, path: tuple[str | int, ...]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        # an alias shares its anchor's node (possibly cyclic, `&a [*a]`): walk each node once
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
                lines[(*path, key)] = k.start_mark.line + 1
                walk(v, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, i))

    if root is not None:
        walk(root, ())
    return lines


def _line_for(lines: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


_UNION_TAGS = frozenset({"webhook", "file", "unleash", "log", *NOTIFIER_KINDS})


def _clean_loc(loc: tuple[str | int, ...], data: Any) -> tuple[str | int, ...]:
    """Drop pydantic's union tags (e.g. `webhook`) from error locations."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict):
            if part in node:
                out.append(part)
                node = node[part]
                continue
            if isinstance(part, str) and part in _UNION_TAGS:
                continue
            out.append(part)
            node = None
        elif isinstance(node, list) and isinstance(part, int):
            out.append(part)
            node = node[part] if 0 <= part < len(node) else None
        else:
            if isinstance(part, str) and (
                part in _UNION_TAGS or part.startswith("function-")
            ):
                continue
            out.append(part)
            node = None
    return tuple(out)


def _pydantic_message(err: Any) -> str:
    etype = err["type"]
    msg = str(err["msg"])
    if etype == "extra_forbidden":
        return "unknown key (remove it or check its spelling)"
    if etype == "missing":
        return "required field is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return msg


def validate_plan_data(data: Any, lines: dict[tuple[str | int, ...], int] | None = None, source: str | None = None) -> Plan:
    """Validate a parsed plan document; raise PlanError listing every problem."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise PlanError(["(plan): the plan must be a YAML mapping of keys to values"], source)
    try:
        # plan files use the documented keys only (`for`, never the Python name `for_`)
        plan = Plan.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _clean_loc(tuple(err["loc"]), data)
            problems.append(_with_line(loc, _pydantic_message(err), lines))
        raise PlanError(_dedupe(problems), source) from None
    sem = semantic_problems(plan)
    if sem:
        raise PlanError([_with_line(loc, msg, lines) for loc, msg in sem], source)
    return plan


def _dedupe(items: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def _with_line(loc: tuple[str | int, ...], msg: str, lines: dict[tuple[str | int, ...], int]) -> str:
    line = _line_for(lines, loc)
    suffix = f" (line {line})" if line is not None else ""
    return f"{format_path(loc)}: {msg}{suffix}"


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    keys: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be plain values", key_node.start_mark
            ) from None
        if key in keys:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark
            )
        keys.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def parse_plan(text: str, source: str | None = None) -> Plan:
    """Parse and validate YAML (or JSON) plan text."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PlanError([f"(plan): not valid YAML: {problem}{where}"], source) from None
    except RecursionError:
        raise PlanError(["(plan): not valid YAML: nested too deeply"], source) from None
    return validate_plan_data(data, _line_index(text), source)


def load_plan(path: str | Path) -> Plan:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError([f"(plan): file not found: {p}"], str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError([f"(plan): cannot read {p}: {exc}"], str(p)) from None
    return parse_plan(text, str(p))


def workflow_id_for(plan_name: str) -> str:
    return f"rollout-{plan_name}"


def is_valid_name(name: str) -> bool:
    return re.match(NAME_RE, name) is not None
