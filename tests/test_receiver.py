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
from worker.receiver import Limits, clip, create_app, json_size, parse_body, workflow_id_candidates

TOKEN = "test-receiver-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@workflow.defn(name="BreachSink")
class BreachSink:
    """Stand-in rollout: records every report_breach and report_resolved payload; `finish` closes it."""

    def __init__(self) -> None:
        self._reports: list[dict[str, Any]] = []
        self._resolved: list[dict[str, Any]] = []
        self._done = False

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self._done)
        return len(self._reports)

    @workflow.signal
    def report_breach(self, payload: dict[str, Any]) -> None:
        self._reports.append(payload)

    @workflow.signal
    def report_resolved(self, payload: dict[str, Any]) -> None:
        self._resolved.append(payload)

    @workflow.query
    def resolutions(self) -> list[dict[str, Any]]:
        return self._resolved

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


async def resolutions(handle: WorkflowHandle[Any, Any], at_least: int) -> list[dict[str, Any]]:
    for _ in range(200):
        got: list[dict[str, Any]] = await handle.query(BreachSink.resolutions)
        if len(got) >= at_least:
            return got
        await asyncio.sleep(0.05)
    return got


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


async def test_resolved_alert_becomes_report_resolved_with_ends_at(
    http: httpx.AsyncClient, dev_env: WorkflowEnvironment, sink_queue: str
) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    a = alert(name, status="resolved", stage="pilot")
    r = await http.post("/alertmanager", json=webhook(a, status="resolved"), headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["signalled"] == []
    assert body["resolved_recorded"][0]["rollout"] == name
    assert body["resolved_recorded"][0]["workflow_id"] == f"rollout-{name}"
    got = await resolutions(handle, 1)
    assert got == [
        {
            "source": "alertmanager",
            "threshold": "error_rate",
            "observed_at": "2026-01-02T03:09:05+00:00",
            "detail": {
                "labels": a["labels"],
                "annotations": a["annotations"],
                "fingerprint": "c0ffee0123456789",
                "generatorURL": a["generatorURL"],
                "receiver": "staged-rollout",
                "groupKey": '{}:{rollout="x"}',
                "status": "resolved",
                "startsAt": a["startsAt"],
                "endsAt": "2026-01-02T03:09:05Z",
                "externalURL": "http://127.0.0.1:9093",
            },
        }
    ]
    assert await breaches(handle) == []  # a resolved alert is never a breach
    await handle.signal(BreachSink.finish)


async def test_stage_label_is_passed_as_stage(
    http: httpx.AsyncClient, dev_env: WorkflowEnvironment, sink_queue: str
) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    r = await http.post("/alertmanager", json=webhook(alert(name, stage="limited-25"), alert(name, threshold="x")),
                        headers=AUTH)
    assert r.status_code == 200, r.text
    got = await breaches(handle, 2)
    assert [g.get("stage") for g in got] == ["limited-25", None]
    assert "stage" not in got[1]
    await handle.signal(BreachSink.finish)


async def test_no_data_alert_of_an_on_no_data_hold_threshold_only_holds(
    http: httpx.AsyncClient, dev_env: WorkflowEnvironment, sink_queue: str
) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    held = alert(name, on_no_data="hold", stage="pilot", alertname="RolloutThresholdNoData")
    breach = alert(name, threshold="latency", on_no_data="breach", alertname="RolloutThresholdNoData")
    r = await http.post("/alertmanager", json=webhook(held, breach), headers=AUTH)
    assert r.status_code == 200, r.text
    got = await breaches(handle, 2)
    assert got[0]["threshold"] is None and got[0]["detail"]["no_data_threshold"] == "error_rate"
    assert got[1]["threshold"] == "latency"  # on_no_data: breach is a breach of the threshold
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
    assert await resolutions(handle, 1)
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


# ---- bounded inputs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def big_http(dev_env: WorkflowEnvironment) -> AsyncIterator[httpx.AsyncClient]:
    """The receiver with its default limits (1 MiB bodies, 100 alerts, 1 KiB values, 16 KiB signals)."""
    app = create_app(dev_env.client, TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://receiver") as c:
        yield c


def test_clip_marks_what_it_cut() -> None:
    assert clip("short", 10) == ("short", False)
    text, cut = clip("é" * 1000, 1024)  # 2000 bytes; never cuts inside a character
    assert cut and text == "é" * 512 + "…[truncated 976 bytes]"


async def test_200_repeats_with_a_15kb_annotation_push_nothing_big(
    big_http: httpx.AsyncClient, dev_env: WorkflowEnvironment, sink_queue: str
) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    a = alert(name)
    a["annotations"]["description"] = "x" * 15_000
    r = await big_http.post("/alertmanager", json=webhook(*[a] * 200), headers=AUTH)
    assert r.status_code == 413  # 3 MB: refused before anything is parsed
    assert "larger than 1048576 bytes" in r.json()["error"]
    # the same within 1 MiB (60 repeats): one signal, its annotation cut with a visible mark
    r = await big_http.post("/alertmanager", json=webhook(*[a] * 60), headers=AUTH)
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()["signalled"]) == 1 and len(r.json()["skipped"]) == 59
    await asyncio.sleep(0.3)
    (got,) = await breaches(handle, 1)
    assert got["detail"]["annotations"]["description"] == "x" * 1024 + "…[truncated 13976 bytes]"
    assert json_size(got) <= Limits().max_signal
    await handle.signal(BreachSink.finish)


async def test_one_alert_with_a_450kb_label_is_cut_to_a_bounded_signal(
    big_http: httpx.AsyncClient, dev_env: WorkflowEnvironment, sink_queue: str
) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    a = alert(name, stage="pilot", huge="y" * 450_000)
    a["annotations"].update({f"note{i}": "z" * 900 for i in range(40)})  # 36 KB of annotations
    r = await big_http.post("/alertmanager", json=webhook(a), headers=AUTH)
    assert r.status_code == 200, r.text[:300]
    (got,) = await breaches(handle, 1)
    assert json_size(got) <= Limits().max_signal
    assert got["detail"]["truncated"] is True
    # cut harder than 1 KiB to fit 16 KiB, the mark counting every byte cut from the original
    assert got["detail"]["labels"]["huge"] == "y" * 256 + "…[truncated 449744 bytes]"
    assert got["detail"]["annotations"]["note0"] == "z" * 256 + "…[truncated 644 bytes]"
    assert got["threshold"] == "error_rate" and got["stage"] == "pilot" and got["value"] == 0.31
    await handle.signal(BreachSink.finish)


async def test_at_most_100_alerts_per_request_are_signalled(
    big_http: httpx.AsyncClient, dev_env: WorkflowEnvironment, sink_queue: str
) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    alerts = [{**alert(name, n=str(i)), "fingerprint": f"fp{i}"} for i in range(130)]
    r = await big_http.post("/alertmanager", json=webhook(*alerts), headers=AUTH)
    assert r.status_code == 200
    out = r.json()
    assert len(out["signalled"]) == 100
    assert [e["index"] for e in out["errors"]] == list(range(100, 130))
    assert {e["status"] for e in out["errors"]} == {413}
    assert len(await breaches(handle, 100)) == 100
    await handle.signal(BreachSink.finish)


async def test_many_labels_are_capped(big_http: httpx.AsyncClient, dev_env: WorkflowEnvironment, sink_queue: str) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    a = alert(name, **{f"l{i:03}": "v" for i in range(300)})
    r = await big_http.post("/alertmanager", json=webhook(a), headers=AUTH)
    assert r.status_code == 200
    (got,) = await breaches(handle, 1)
    labels = got["detail"]["labels"]
    assert len(labels) == Limits().max_entries + 1 and labels["…"] == f"{len(a['labels']) - 64} more dropped"
    await handle.signal(BreachSink.finish)


# ---- health, readiness and metrics -----------------------------------------------------------


async def test_readyz_when_temporal_answers(http: httpx.AsyncClient) -> None:
    r = await http.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True


async def test_readyz_is_503_when_temporal_is_unreachable() -> None:
    client = await Client.connect(f"127.0.0.1:{free_port()}", lazy=True, data_converter=pydantic_data_converter)
    app = create_app(client, TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as c:
        assert (await c.get("/healthz")).status_code == 200  # alive all the same
        r = await asyncio.wait_for(c.get("/readyz"), 30)
    assert r.status_code == 503 and r.json()["ready"] is False
    assert "Temporal unreachable" in r.json()["reason"]


def _sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not in metrics")


async def test_metrics_count_requests_signals_and_errors(
    dev_env: WorkflowEnvironment, sink_queue: str
) -> None:
    name, handle = await start_sink(dev_env.client, sink_queue)
    app = create_app(dev_env.client, TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as c:
        before = (await c.get("/metrics")).text
        assert _sample(before, "rollout_receiver_requests_total", code="200") == 0
        a = alert(name, note="n" * 2000)
        await c.post("/alertmanager", json=webhook(a, alert(name, status="resolved")), headers=AUTH)
        await c.post("/alertmanager", json=webhook(alert("no-such-rollout")), headers=AUTH)
        await c.post("/alertmanager", json=webhook(alert("x")), headers={})
        r = await c.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert _sample(text, "rollout_receiver_requests_total", path="/alertmanager", code="200") == 1
    assert _sample(text, "rollout_receiver_requests_total", path="/alertmanager", code="404") == 1
    assert _sample(text, "rollout_receiver_requests_total", path="/alertmanager", code="401") == 1
    assert _sample(text, "rollout_receiver_signals_total", signal="report_breach") == 1
    assert _sample(text, "rollout_receiver_signals_total", signal="report_resolved") == 1
    assert _sample(text, "rollout_receiver_errors_total", status="404") == 1
    assert _sample(text, "rollout_receiver_truncated_values_total") == 1
    await handle.signal(BreachSink.finish)


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
