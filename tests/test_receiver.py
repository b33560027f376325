"""The Alertmanager receiver against a real Temporal dev server.

A small sink workflow stands in for the rollout here so that the exact signal
payloads can be checked; tests/test_alert_path.py drives the real StagedRollout.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from tests.promstack import free_port
from worker.receiver import create_app, parse_body, workflow_id_candidates

TOKEN = "test-receiver-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@workflow.defn(name="BreachSink")
class BreachSink:
    """Stand-in rollout: records every report_breach payload; `finish` closes it."""

    def __init__(self) -> None:
        self._reports: list[dict[str, Any]] = []
        self._done = False

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self._done)
        return len(self._reports)

    @workflow.signal
    def report_breach(self, payload: dict[str, Any]) -> None:
        self._reports.append(payload)

    @workflow.signal
    def finish(self) -> None:
        self._done = True

    @workflow.query
    def breaches(self) -> list[dict[str, Any]]:
        return self._reports


@pytest.fixture(scope="module")
async def sink_queue(dev_env: WorkflowEnvironment) -> AsyncIterator[str]:
    queue = f"receiver-test-{uuid.uuid4().hex[:8]}"
    async with Worker(
        dev_env.client,
        task_queue=queue,
        workflows=[BreachSink],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        yield queue


async def start_sink(client: Client, queue: str, name: str | None = None) -> tuple[str, WorkflowHandle[Any, Any]]:
    name = name or f"recv-{uuid.uuid4().hex[:10]}"
    handle = await client.start_workflow(BreachSink.run, id=f"rollout-{name}", task_queue=queue)
    return name, handle


async def breaches(handle: WorkflowHandle[Any, Any], at_least: int = 0, within: float = 10.0) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        got: list[dict[str, Any]] = await handle.query(BreachSink.breaches)
        if len(got) >= at_least or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.05)


def alert(rollout: str | None, *, status: str = "firing", threshold: str | None = "error_rate", **labels: str) -> dict[str, Any]:
    lab: dict[str, str] = {"alertname": "RolloutErrorRateHigh", **labels}
    if rollout is not None:
        lab["rollout"] = rollout
    if threshold is not None:
        lab["threshold"] = threshold
    return {
        "status": status,
        "labels": lab,
        "annotations": {"value": "0.31", "summary": "error rate above 2%"},
        "startsAt": "2026-01-02T03:04:05.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-01-02T03:09:05Z",
        "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=x",
        "fingerprint": "c0ffee0123456789",
    }


def webhook(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{rollout="x"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "staged-rollout",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }


@pytest.fixture(scope="module")
async def http(dev_env: WorkflowEnvironment) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(dev_env.client, TOKEN, max_body=20_000)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://receiver") as c:
        yield c


async def test_healthz(http: httpx.AsyncClient) -> None:
    r = await http.get("/healthz")
    assert r.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}],
)
async def test_auth_required(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    r = await http.post("/alertmanager", json=webhook(alert("x")), headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"version": "4", "alerts": NaN}', "malformed JSON"),
        (b'{"version": "3", "alerts": []}', "unsupported webhook version"),
        (json.dumps({"version": "4", "status": "firing"}).encode(), "alerts: Field required"),
        (json.dumps(webhook({"status": "firing"})).encode(), "alerts[0].labels"),
        (json.dumps(webhook({**alert("x"), "labels": {"rollout": 5}})).encode(), "alerts[0].labels.rollout"),
        (json.dumps(webhook({**alert("x"), "startsAt": "yesterday"})).encode(), "RFC 3339"),
        (json.dumps(webhook({**alert("x"), "status": "pending"})).encode(), "alerts[0].status"),
        (b'{"a": "\\ud800"}', "invalid unicode"),
    ],
)
async def test_bad_bodies_get_400_with_a_reason(http: httpx.AsyncClient, body: bytes, reason: str) -> None:
    r = await http.post("/alertmanager", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert reason in r.json()["error"]


async def test_deep_nesting_is_400(dev_env: WorkflowEnvironment) -> None:
    app = create_app(dev_env.client, TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as c:
        r = await c.post("/alertmanager", content=b"[" * 200_000 + b"]" * 200_000, headers=AUTH)
    assert r.status_code == 400
    assert "malformed JSON" in r.json()["error"]


async def test_oversized_body_is_413(http: httpx.AsyncClient) -> None:
    big = webhook(*[alert("x") for _ in range(100)])
    r = await http.post("/alertmanager", json=big, headers=AUTH)
    assert r.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(30):
            yield b" " * 1000

    r = await http.post("/alertmanager", content=chunks(), headers=AUTH)
    assert r.status_code == 413
    assert "larger than 20000 bytes" in r.json()["error"]


async def test_unknown_rollout_is_404(http: httpx.AsyncClient) -> None:
    r = await http.post("/alertmanager", json=webhook(alert("no-such-rollout-here")), headers=AUTH)
    assert r.status_code == 404
    body = r.json()
    assert body["signalled"] == []
    assert body["errors"][0]["status"] == 404
    assert "unknown rollout" in body["errors"][0]["error"]


async def test_missing_rollout_label_is_400(http: httpx.AsyncClient) -> None:
    r = await http.post("/alertmanager", json=webhook(alert(None)), headers=AUTH)
    assert r.status_code == 400
    assert "no 'rollout' label" in r.json()["errors"][0]["error"]


async def test_closed_rollout_is_409(http: httpx.AsyncClient, dev_env: WorkflowEnvironment, sink_queue: str) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    await handle.signal(BreachSink.finish)
    await handle.result()
    r = await http.post("/alertmanager", json=webhook(alert(name)), headers=AUTH)
    assert r.status_code == 409
    assert "completed" in r.json()["errors"][0]["error"]


async def test_firing_alert_becomes_report_breach(
    http: httpx.AsyncClient, dev_env: WorkflowEnvironment, sink_queue: str
) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    r = await http.post("/alertmanager", json=webhook(alert(name, action="rollback")), headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["workflow_id"] for s in body["signalled"]] == [f"rollout-{name}"]
    assert body["errors"] == [] and body["resolved_recorded"] == []
    got = await breaches(handle, 1)
    sent = alert(name, action="rollback")
    assert got == [
        {
            "source": "alertmanager",
            "threshold": "error_rate",
            "value": 0.31,
            "observed_at": "2026-01-02T03:04:05.123456+00:00",
            "action": "rollback",
            "detail": {
                "labels": sent["labels"],
                "annotations": sent["annotations"],
                "fingerprint": "c0ffee0123456789",
                "generatorURL": sent["generatorURL"],
                "receiver": "staged-rollout",
                "groupKey": '{}:{rollout="x"}',
                "status": "firing",
                "startsAt": sent["startsAt"],
                "externalURL": "http://127.0.0.1:9093",
            },
        }
    ]
    await handle.signal(BreachSink.finish)


async def test_workflow_id_label_and_optional_fields(
    http: httpx.AsyncClient, dev_env: WorkflowEnvironment, sink_queue: str
) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    a = alert(f"rollout-{name}", threshold=None, action="explode")
    a["annotations"] = {"value": "not a number"}
    r = await http.post("/alertmanager", json=webhook(a), headers=AUTH)
    assert r.status_code == 200, r.text
    (got,) = await breaches(handle, 1)
    assert got["threshold"] is None  # the workflow treats a missing threshold as `hold`
    assert "value" not in got and "action" not in got
    assert got["detail"]["ignored_action"] == "explode"
    assert workflow_id_candidates(name) == [f"rollout-{name}", name]
    assert workflow_id_candidates(f"rollout-{name}")[0] == f"rollout-{name}"
    await handle.signal(BreachSink.finish)


async def test_duplicates_are_harmless(http: httpx.AsyncClient, dev_env: WorkflowEnvironment, sink_queue: str) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    body = webhook(alert(name))
    results = await asyncio.gather(*(http.post("/alertmanager", json=body, headers=AUTH) for _ in range(3)))
    assert [r.status_code for r in results] == [200, 200, 200]
    got = await breaches(handle, 3)
    assert len(got) == 3 and all(g == got[0] for g in got)  # identical evidence: the workflow ignores repeats
    await handle.signal(BreachSink.finish)


async def test_resolved_alerts_are_recorded_not_signalled(
    http: httpx.AsyncClient, dev_env: WorkflowEnvironment, sink_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    caplog.set_level("INFO", logger="rollout.receiver")
    r = await http.post("/alertmanager", json=webhook(alert(name, status="resolved"), status="resolved"), headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["signalled"] == []
    assert body["resolved_recorded"][0]["rollout"] == name
    assert body["resolved_recorded"][0]["endsAt"] == "2026-01-02T03:09:05Z"
    assert "resolved alert recorded" in caplog.text
    await asyncio.sleep(0.3)
    assert await breaches(handle) == []
    await handle.signal(BreachSink.finish)


async def test_mixed_batch_delivers_what_it_can(
    http: httpx.AsyncClient, dev_env: WorkflowEnvironment, sink_queue: str
) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    body = webhook(alert("nobody-knows-this"), alert(name, threshold="latency_p99"), alert(name, status="resolved"))
    r = await http.post("/alertmanager", json=body, headers=AUTH)
    assert r.status_code == 200
    out = r.json()
    assert [s["index"] for s in out["signalled"]] == [1]
    assert [e["index"] for e in out["errors"]] == [0]
    assert [x["index"] for x in out["resolved_recorded"]] == [2]
    got = await breaches(handle, 1)
    assert [g["threshold"] for g in got] == ["latency_p99"]
    await handle.signal(BreachSink.finish)


async def test_temporal_unreachable_is_503() -> None:
    client = await Client.connect(
        f"127.0.0.1:{free_port()}", lazy=True, data_converter=pydantic_data_converter
    )
    app = create_app(client, TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as c:
        r = await asyncio.wait_for(c.post("/alertmanager", json=webhook(alert("x")), headers=AUTH), 60)
    assert r.status_code == 503, r.text
    assert r.json()["errors"][0]["status"] == 503


def test_parse_body_accepts_real_alertmanager_timestamps() -> None:
    body = parse_body(json.dumps(webhook(alert("x"))).encode())
    assert body.alerts[0].observed_at() == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def test_create_app_needs_a_token() -> None:
    with pytest.raises(ValueError):
        create_app(None, "  ")  # type: ignore[arg-type]


# ---- fuzz: random bodies never crash the receiver -------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_json = st.recursive(
    _scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4), max_leaves=15
)
_label_keys = st.sampled_from(["rollout", "threshold", "action", "alertname", "severity"])


def _good_alert(known: str) -> st.SearchStrategy[dict[str, Any]]:
    labels = st.dictionaries(_label_keys, st.sampled_from([known, "nope", "", "rollout-", "hold"]) | st.text(max_size=30))
    return st.fixed_dictionaries(
        {
            "status": st.sampled_from(["firing", "resolved"]),
            "labels": labels,
            "annotations": st.dictionaries(st.sampled_from(["value", "summary"]), st.text(max_size=10)),
            "startsAt": st.sampled_from(["2026-01-02T03:04:05Z", "2026-01-02T03:04:05.999999999+02:00"]),
            "endsAt": st.sampled_from(["0001-01-01T00:00:00Z", "2026-01-02T03:04:05Z"]),
            "generatorURL": st.text(max_size=10),
            "fingerprint": st.text(max_size=10),
        }
    )


def _alerts(known: str) -> st.SearchStrategy[Any]:
    labels = st.dictionaries(_label_keys, st.sampled_from([known, "nope", "", "rollout-", "hold"]) | st.text(max_size=30))
    good = st.fixed_dictionaries(
        {
            "status": st.sampled_from(["firing", "resolved"]),
            "labels": labels,
            "annotations": st.dictionaries(st.sampled_from(["value", "summary"]), st.text(max_size=10)),
            "startsAt": st.sampled_from(["2026-01-02T03:04:05Z", "2026-01-02T03:04:05.999999999+02:00", "x"]),
            "endsAt": st.sampled_from(["0001-01-01T00:00:00Z", "", None]),
            "generatorURL": st.text(max_size=10),
            "fingerprint": st.text(max_size=10),
        }
    )
    return good | _json | st.builds(lambda g, k, v: {**g, k: v}, good, st.text(max_size=12), _json)


def _bodies(known: str) -> st.SearchStrategy[bytes]:
    hooks = st.fixed_dictionaries(
        {
            "version": st.sampled_from(["4", 4, "3"]),
            "groupKey": st.text(max_size=10) | _json,
            "status": st.sampled_from(["firing", "resolved", "other"]),
            "receiver": st.text(max_size=10),
            "alerts": st.lists(_alerts(known), max_size=3) | _json,
        },
        optional={"truncatedAlerts": st.integers() | _json, "commonLabels": _json, "externalURL": _json},
    )
    valid = st.fixed_dictionaries(
        {
            "version": st.just("4"),
            "groupKey": st.text(max_size=10),
            "status": st.sampled_from(["firing", "resolved"]),
            "receiver": st.text(max_size=10),
            "alerts": st.lists(_good_alert(known), max_size=3),
        }
    )
    return st.one_of(
        st.binary(max_size=200),
        _json.map(lambda v: json.dumps(v).encode()),
        hooks.map(lambda v: json.dumps(v).encode()),
        valid.map(lambda v: json.dumps(v).encode()),
        valid.map(lambda v: json.dumps(v).encode()),
    )


async def test_fuzz_never_500(http: httpx.AsyncClient, dev_env: WorkflowEnvironment, sink_queue: str) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    loop = asyncio.get_running_loop()
    seen: dict[int, int] = {}

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(_bodies(name))
    def check(body: bytes) -> None:
        fut = asyncio.run_coroutine_threadsafe(http.post("/alertmanager", content=body, headers=AUTH), loop)
        r = fut.result(timeout=30)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code in (200, 400, 404, 409, 413), (r.status_code, body[:300], r.text)
        assert isinstance(r.json(), dict)

    await asyncio.to_thread(check)
    print(f"\nfuzz statuses: {seen}")
    assert seen.get(400, 0) > 0
    await handle.signal(BreachSink.finish)
