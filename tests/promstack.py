"""Real Prometheus and Alertmanager processes for tests, on free 127.0.0.1 ports.

The Debian packages `prometheus` and `prometheus-alertmanager` provide the
binaries (scripts/install-system-deps.sh). A small prometheus-client exporter
exposes a gauge `rollout_test_error_rate{case=...}` that the tests set.
Every process started here is stopped by its pid (terminate, then kill).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run scripts/install-system-deps.sh (make test does)")
    return found


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s: {last}")


class _Process:
    """One child process with its log file; stopped by its pid."""

    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def _spawn(self, argv: list[str]) -> None:
        self._log = (self.dir / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self._log)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        path = self.dir / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Exporter:
    """A prometheus-client exporter with its own registry, on a free port."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.error_rate = Gauge(
            "rollout_test_error_rate", "error rate the test controls", ["case"], registry=self.registry
        )
        self.port = free_port()
        self._server, self._thread = start_http_server(self.port, addr=HOST, registry=self.registry)

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def set(self, case: str, value: float) -> None:
        self.error_rate.labels(case=case).set(value)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class Prometheus(_Process):
    """A real Prometheus scraping `targets` every second; restartable on the same port."""

    def __init__(
        self,
        targets: list[str],
        *,
        rules: dict[str, Any] | None = None,
        alertmanager: str | None = None,
        interval: str = "1s",
    ) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="rollout-prom-")), "prometheus")
        self.port = free_port()
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "scrape_configs": [{"job_name": "test", "static_configs": [{"targets": targets}]}],
        }
        if rules is not None:
            (self.dir / "rules.yml").write_text(yaml.safe_dump(rules))
            config["rule_files"] = [str(self.dir / "rules.yml")]
        if alertmanager is not None:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self._spawn(
            [
                binary("prometheus"),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--rules.alert.resend-delay=1s",
                "--log.level=warn",
            ]
        )
        wait_http(f"{self.url}/-/ready", proc=self.proc)

    def wait_for_value(self, query: str, predicate: Callable[[float], bool], timeout: float = 15.0) -> float:
        """Poll until `query` returns a value satisfying `predicate`; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                body = httpx.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=2).json()
                result = body["data"]["result"]
                if result:
                    value = float(result[0]["value"][1])
                    if predicate(value):
                        return value
            except (httpx.HTTPError, KeyError, ValueError, IndexError, TypeError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"{query} never satisfied the condition within {timeout}s")


class Alertmanager(_Process):
    """A real Alertmanager (clustering off) with the given configuration."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="rollout-am-")), "alertmanager")
        self.port = free_port()
        (self.dir / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self._spawn(
            [
                binary("prometheus-alertmanager"),
                f"--config.file={self.dir / 'alertmanager.yml'}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ]
        )
        wait_http(f"{self.url}/-/ready", proc=self.proc)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


def running_exporter() -> Iterator[Exporter]:
    """Body of a module fixture: an exporter, closed afterwards."""
    exp = Exporter()
    try:
        yield exp
    finally:
        exp.close()


def ready_prometheus(exporter: Exporter, **kwargs: Any) -> Iterator[Prometheus]:
    """Body of a module fixture: a Prometheus that has scraped `exporter` once, stopped afterwards."""
    exporter.set("ready", 1.0)
    p = Prometheus([exporter.target], **kwargs)
    try:
        p.wait_for_value('rollout_test_error_rate{case="ready"}', lambda v: v == 1.0, timeout=30)
        yield p
    finally:
        p.close()
