"""Property tests: whatever the input, parsing a plan returns a Plan or raises PlanError."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout.errors import PlanError
from rollout.plan import Plan, parse_plan, validate_plan_data
from rollout.render import render_plan_markdown

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))
EXAMPLE_TEXTS = [p.read_text(encoding="utf-8") for p in EXAMPLES]
EXAMPLE_DATA = [yaml.safe_load(t) for t in EXAMPLE_TEXTS]

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# words the plan model cares about, so random input reaches deeper validators
WORDS = [
    "apiVersion", "rollout/v1", "name", "owners", "rollout", "workflow", "incident_response",
    "approvers", "target", "kind", "log", "webhook", "file", "unleash", "url", "path",
    "metrics", "prometheus_url", "interval", "fallback", "escalation", "ack_within", "chain",
    "max_hold", "notify", "stages", "tier", "pilot", "limited", "system_of_record", "scope",
    "percent", "segments", "authority", "auto", "review", "forbid", "approvals", "roles",
    "remind_after", "window", "thresholds", "query", "max", "min", "for", "on_no_data",
    "action", "hold", "narrow", "rollback", "handoff", "item", "to", "public_keys",
    "require_signed_approvals", "distinct_from", "30s", "5m", "72h", "14d", "0s", "-5m",
    "1e400", ".nan", ".inf", "-.inf", "~", "null", "true", "no", "0x1F", "2001-12-14",
    "99999999999999999999d", "http://x", "a@b", "&a", "*a", "!!binary", "!!set", "!!python/object:os.system",
    "<<", "?", "|", ">", "'", '"', "\\u0000", "\t",
]


def _check(fn: Any, *args: Any) -> Plan | None:
    """Call a parser; PlanError is the only failure allowed."""
    try:
        plan = fn(*args)
    except PlanError as exc:
        assert exc.problems, "a PlanError must name at least one problem"
        assert all(isinstance(p, str) and p for p in exc.problems)
        return None
    assert isinstance(plan, Plan)
    # a plan that validates can always be hashed and rendered
    assert len(plan.plan_hash()) == 64
    assert render_plan_markdown(plan).startswith("# Rollout plan: ")
    return plan


# ---- random YAML text ---------------------------------------------------------------

yaml_tokens = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from([": ", "\n", "\n  ", "\n    ", "- ", "[", "]", "{", "}", ", ", "#", "---\n"]),
    st.text(max_size=8),
)
yaml_like_text = st.lists(yaml_tokens, max_size=60).map("".join)


@FUZZ
@given(st.text(max_size=400))
def test_random_text_never_crashes(text: str) -> None:
    _check(parse_plan, text)


@FUZZ
@given(yaml_like_text)
def test_random_yaml_like_text_never_crashes(text: str) -> None:
    _check(parse_plan, text)


# ---- random values in place of parts of the example plans --------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(WORDS),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(WORDS), st.text(max_size=6), st.integers()), children, max_size=4),
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


@st.composite
def mutated_plans(draw: st.DrawFn) -> Any:
    data = copy.deepcopy(draw(st.sampled_from(EXAMPLE_DATA)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["drop", "replace", "unknown_key", "shuffle", "duplicate", "retype"]))
        if not path:
            if op in ("replace", "retype"):
                data = draw(values)
            continue
        parent = _get(data, path[:-1])
        key = path[-1]
        target = parent[key]
        if op == "drop":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(values)
        elif op == "retype":
            parent[key] = draw(
                st.sampled_from(
                    [str(target), [target], {"value": target}, None, 0, -1, 1.5, True, "", [], {}]
                )
            )
        elif op == "unknown_key" and isinstance(target, dict):
            target[draw(st.sampled_from(["colour", "windw", "for_", "max ", "Tier", 7]))] = draw(values)
        elif op == "shuffle" and isinstance(target, list):
            parent[key] = draw(st.permutations(target))
        elif op == "duplicate" and isinstance(target, list) and target:
            target.append(copy.deepcopy(draw(st.sampled_from(target))))
        if isinstance(parent, dict) and "stages" in parent and draw(st.booleans()):
            stages = parent["stages"]
            if isinstance(stages, list):
                parent["stages"] = draw(st.permutations(stages))
    return data


@FUZZ
@given(mutated_plans())
def test_mutated_examples_as_data_never_crash(data: Any) -> None:
    _check(validate_plan_data, data)


@FUZZ
@given(mutated_plans(), st.booleans())
def test_mutated_examples_as_yaml_never_crash(data: Any, flow: bool) -> None:
    try:
        text = yaml.safe_dump(data, default_flow_style=flow, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        pytest.skip("not representable as YAML")
    _check(parse_plan, text)


@FUZZ
@given(mutated_plans())
def test_mutated_examples_as_json_never_crash(data: Any) -> None:
    text = json.dumps(data, allow_nan=True)  # YAML 1.1 reads most JSON
    _check(parse_plan, text)


# ---- random edits of the example texts ----------------------------------------------


@st.composite
def edited_texts(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(EXAMPLE_TEXTS))
    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        lines = text.split("\n")
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        op = draw(st.sampled_from(["delete_line", "swap_lines", "edit_value", "insert_line", "indent"]))
        if op == "delete_line":
            del lines[i]
        elif op == "swap_lines":
            j = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "edit_value" and ":" in lines[i]:
            head = lines[i].split(":", 1)[0]
            lines[i] = f"{head}: {draw(st.one_of(st.sampled_from(WORDS), st.text(max_size=10)))}"
        elif op == "insert_line":
            indent = " " * draw(st.sampled_from([0, 2, 4, 6]))
            lines.insert(i, f"{indent}{draw(st.sampled_from(WORDS))}: {draw(st.sampled_from(WORDS))}")
        elif op == "indent":
            lines[i] = draw(st.sampled_from(["", " ", "  ", "\t"])) + lines[i]
        text = "\n".join(lines)
    return text


@FUZZ
@given(edited_texts())
def test_edited_example_texts_never_crash(text: str) -> None:
    _check(parse_plan, text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "~",
        "[]",
        "42",
        "'a'",
        "&a [*a]",
        "a: &x [*x]",
        "[" * 5000,
        "{a: " * 3000,
        "- " * 3000,
        "!!python/object/apply:os.system ['true']",
        "!!binary aGVsbG8=",
        "? [a, b]\n: c",
        "{[1, 2]: 3}",
        "\x00",
        "a: b\n---\nc: d",
    ],
)
def test_known_nasty_inputs(text: str) -> None:
    _check(parse_plan, text)
