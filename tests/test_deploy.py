"""deploy/: compose and Kubernetes files parsed and cross-checked against the code, with the
real promtool and amtool.

Every port Prometheus scrapes is one a component listens on (from its command line),
every probe path is a route the component serves, and every metric a rule or the
dashboard uses is one the code exports (read from the registries themselves).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "kubernetes"
PROM = DEPLOY / "prometheus"
DASHBOARD = K8S / "dashboards" / "staged-rollout.json"

# Temporal SDK metrics the dashboard or rules use; tests/test_worker_metrics.py proves a real
# worker exports each of them.
SDK_METRICS_USED = {"temporal_workflow_task_schedule_to_start_latency_bucket"}


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found; run scripts/install-system-deps.sh")
    return found


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def compose_prometheus_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(compose()["configs"]["prometheus-config"]["content"])
    return data


def kustomized() -> list[dict[str, Any]]:
    out = subprocess.run([tool("kubectl"), "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def exported_metric_names() -> set[str]:
    """Every sample name the worker (controller gauges, activity counters) and the receiver export."""
    from activities import telemetry
    from worker.metrics import WorkerTelemetry
    from worker.receiver import _Metrics

    texts = [
        generate_latest(telemetry.REGISTRY).decode(),
        generate_latest(_Metrics().registry).decode(),
        generate_latest(WorkerTelemetry("q", "id").registry).decode(),
    ]
    names: set[str] = set()
    for text in texts:
        for family in text_string_to_metric_families(text):
            names.add(family.name)
            names.update(s.name for s in family.samples)
            if family.type == "counter":
                names.add(f"{family.name}_total")
            if family.type == "histogram":
                names.update({f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum"})
    return names


_METRIC = re.compile(r"\b((?:rollout|temporal)_[a-zA-Z0-9_]+|up)\b(?=\s*[{\[)\s]|\s*$|\s*[=<>!])")


def metrics_in(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values are not metric names
    return {m for m in _METRIC.findall(expr) if not m.endswith("_")}


def rule_exprs(path: Path) -> list[str]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


# ---- compose -------------------------------------------------------------------------------------


def test_compose_runs_temporals_production_image_against_postgresql_with_a_schema_step() -> None:
    services = compose()["services"]
    assert not any("auto-setup" in str(s.get("image", "")) for s in services.values())
    temporal = services["temporal"]
    assert temporal["image"].startswith("temporalio/server:")
    assert temporal["environment"]["DB"] == "postgres12" and temporal["environment"]["POSTGRES_SEEDS"] == "postgresql"
    assert temporal["depends_on"]["temporal-schema"]["condition"] == "service_completed_successfully"
    schema = services["temporal-schema"]
    assert schema["image"].startswith("temporalio/admin-tools:")
    script = schema["command"][0]
    for step in ("create-database", "setup-schema", "update-schema", "temporal_visibility"):
        assert step in script
    assert "namespace create default" in services["temporal-setup"]["command"][0]


def test_compose_prometheus_scrapes_ports_the_worker_and_receiver_listen_on() -> None:
    services = compose()["services"]
    jobs = {j["job_name"]: j for j in compose_prometheus_config()["scrape_configs"]}

    worker_cmd = services["rollout-worker"]["command"]
    worker_port = port_of(arg_after(worker_cmd, "--metrics-address"))
    [sd] = jobs["rollout-worker"]["dns_sd_configs"]
    assert sd["names"] == ["rollout-worker"] and sd["port"] == worker_port

    receiver = services["rollout-receiver"]
    receiver_port = int(arg_after(receiver["command"], "--port"))
    assert arg_after(receiver["command"], "--host") == "0.0.0.0"  # reachable from Prometheus
    netns = receiver["network_mode"].removeprefix("service:")
    assert jobs["rollout-receiver"]["static_configs"][0]["targets"] == [f"{netns}:{receiver_port}"]

    for name, port, in (("rollout-worker", worker_port), ("rollout-receiver", receiver_port)):
        test = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/readyz" in test, name


def test_compose_prometheus_loads_the_generated_and_controller_rules() -> None:
    config = compose_prometheus_config()
    mounts = compose()["services"]["prometheus"]["volumes"]
    for rule_file in config["rule_files"]:
        source = next(m.split(":")[0] for m in mounts if m.split(":")[1] == rule_file)
        assert (DEPLOY / source).is_file(), source


def test_promtool_check_config_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    config = compose_prometheus_config()
    for i, rule_file in enumerate(list(config["rule_files"])):
        name = Path(rule_file).name
        shutil.copy(PROM / name, tmp_path / name)
        config["rule_files"][i] = str(tmp_path / name)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    r = subprocess.run([tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_provisions_the_grafana_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = dict(m.rsplit(":", 1)[0].split(":", 1) for m in grafana["volumes"] if m.startswith("./"))
    dashboards = DEPLOY / mounts["./kubernetes/dashboards"].replace("/var/lib/grafana/dashboards", "kubernetes/dashboards")
    assert (dashboards / "staged-rollout.json").is_file()
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "staged-rollout.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts["./kubernetes/dashboards"]
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


# ---- Kubernetes ----------------------------------------------------------------------------------


def _deployment(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)


def test_kubernetes_probes_and_scrape_ports_match_what_the_code_serves() -> None:
    from worker.metrics import WorkerTelemetry
    from worker.receiver import create_app

    worker_paths = {r.path for r in WorkerTelemetry("q", "id").app().routes}  # type: ignore[attr-defined]
    receiver_paths = {r.path for r in create_app(None, "t").routes}  # type: ignore[arg-type,attr-defined]
    docs = kustomized()
    for name, flag, paths in (
        ("rollout-worker", "--metrics-address", worker_paths),
        ("rollout-receiver", "--port", receiver_paths),
    ):
        dep = _deployment(docs, name)
        pod = dep["spec"]["template"]
        [container] = pod["spec"]["containers"]
        listen = port_of(arg_after(container["args"], flag)) if flag != "--port" else int(arg_after(container["args"], flag))
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == listen, name
        assert pod["metadata"]["annotations"]["prometheus.io/path"] in paths
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path and path in paths, (name, probe)
            assert ports[get["port"]] == listen, (name, probe)


def test_kustomize_ships_the_grafana_dashboard() -> None:
    docs = kustomized()
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "staged-rollout-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["staged-rollout.json"]) == json.loads(DASHBOARD.read_text(encoding="utf-8"))


# ---- metrics used are metrics exported -----------------------------------------------------------


def test_every_metric_a_rule_or_the_dashboard_uses_is_exported() -> None:
    exported = exported_metric_names() | SDK_METRICS_USED | {"up"}
    used: dict[str, set[str]] = {}
    for source, exprs in (
        ("controller-rules.yml", rule_exprs(PROM / "controller-rules.yml")),
        ("rules.yml", rule_exprs(PROM / "rules.yml")),
        ("dashboard", dashboard_exprs()),
    ):
        for expr in exprs:
            for name in metrics_in(expr):
                if name.startswith("rollout_") or name.startswith("temporal_") or name == "up":
                    used.setdefault(name, set()).add(source)
    assert "rollout_exposure_info" in used and "rollout_decision_to_target_seconds_bucket" in used
    missing = {n: sorted(s) for n, s in used.items() if n not in exported}
    assert not missing, f"used but not exported: {missing}"


def test_metrics_in_finds_names_and_skips_label_values() -> None:
    assert metrics_in('sum(rate(rollout_x_total{a="rollout_y"}[5m])) > 0 and on() up == 0') == {"rollout_x_total", "up"}


# ---- promtool and amtool -------------------------------------------------------------------------


def test_promtool_check_rules_accepts_the_controller_rules() -> None:
    r = subprocess.run([tool("promtool"), "check", "rules", str(PROM / "controller-rules.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS: 7 rules found" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("alert", "series", "labels", "summary"),
    [
        ("RolloutWorkerDown", [{"series": 'up{job="rollout-worker",instance="w1"}', "values": "0x20"}],
         {"job": "rollout-worker", "instance": "w1"}, "rollout worker w1 is down: rollouts do not move, monitors do not run"),
        ("RolloutNoTaskQueuePollers",
         [{"series": 'rollout_task_queue_pollers{task_queue="rollouts",type="activity",instance="w1"}', "values": "0x20"}],
         {"task_queue": "rollouts", "type": "activity"}, "no activity pollers on task queue rollouts: rollouts are stuck"),
        ("RolloutReceiverErrors",
         [{"series": 'rollout_receiver_errors_total{status="503",instance="r1"}', "values": "0+1x20"}],
         {"status": "503"},
         "the receiver could not deliver alerts (status 503): Temporal unreachable or internal errors"),
        ("RolloutTargetFailures",
         [{"series": 'rollout_target_failures_total{target="webhook",reason="unavailable",instance="w1"}',
           "values": "0+1x20"}],
         {"target": "webhook", "reason": "unavailable"}, "10 failed deliveries to webhook targets (unavailable) in 10m"),
    ],
)
def test_controller_alerts_fire(
    alert: str, series: list[dict[str, str]], labels: dict[str, str], summary: str, tmp_path: Path
) -> None:
    shutil.copy(PROM / "controller-rules.yml", tmp_path / "rules.yml")
    # the other components are up, so only the alert under test can fire
    up = [{"series": f'up{{job="{j}",instance="x"}}', "values": "1x20"} for j in ("rollout-worker", "rollout-receiver")
          if f'job="{j}"' not in series[0]["series"]]
    doc = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series + up,
        "alert_rule_test": [{"eval_time": "10m", "alertname": alert,
                             "exp_alerts": [{"exp_labels": {**labels, "severity": "page"},
                                             "exp_annotations": {"summary": summary}}]}],
    }]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    r = subprocess.run([tool("promtool"), "test", "rules", "test.yml"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_amtool_check_config_accepts_the_shipped_alertmanager_config(tmp_path: Path) -> None:
    shutil.copy(PROM / "alertmanager.yml", tmp_path / "alertmanager.yml")
    (tmp_path / "rollout-receiver-token").write_text("token", encoding="utf-8")
    r = subprocess.run([tool("amtool"), "check-config", str(tmp_path / "alertmanager.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
