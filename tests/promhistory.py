"""A real Prometheus holding backfilled history, for `rollout simulate` tests.

The test generates samples (days of them), `write_openmetrics` writes them as an
OpenMetrics file, and `HistoryPrometheus` runs `promtool tsdb create-blocks-from
openmetrics` into the data directory before starting Prometheus on it (with a
retention long enough to keep the history). Optional scrape targets let the same
Prometheus record live series too. Every process is stopped by its pid.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from tests.promstack import HOST, Prometheus, binary, wait_http

METRIC = "rollout_sim_error_rate"

Sample = tuple[Mapping[str, str], int, float]  # labels, epoch milliseconds, value


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def write_openmetrics(path: Path, samples: Iterable[Sample], metric: str = METRIC) -> int:
    """Write gauge samples (sorted by series, then time, as promtool wants); return how many."""
    by_series: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]] = {}
    for labels, at_ms, value in samples:
        by_series.setdefault(tuple(sorted(labels.items())), []).append((at_ms, value))
    count = 0
    with path.open("w", encoding="utf-8") as f:
        f.write(f"# HELP {metric} error rate backfilled by a test\n# TYPE {metric} gauge\n")
        for key in sorted(by_series):
            text = ",".join(f'{k}="{v}"' for k, v in key)
            for at_ms, value in sorted(by_series[key]):
                f.write(f"{metric}{{{text}}} {_value(value)} {at_ms // 1000}.{at_ms % 1000:03d}\n")
                count += 1
        f.write("# EOF\n")
    return count


def series(case: str, start_ms: int, end_ms: int, step_ms: int, value: float = 0.01) -> Iterator[Sample]:
    """A constant sample every `step_ms` from `start_ms` through `end_ms` for label `case`."""
    for at in range(start_ms, end_ms + 1, step_ms):
        yield {"case": case}, at, value


class HistoryPrometheus(Prometheus):
    """A Prometheus started on blocks backfilled from `history` (an OpenMetrics file)."""

    def __init__(self, history: Path | None, targets: list[str] | None = None, interval: str = "1s") -> None:
        self._history = history
        super().__init__(targets or [], interval=interval)

    def backfill(self, history: Path) -> None:
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [
                binary("promtool"),
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                "--max-block-duration=768h",
                str(history),
                str(data),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"promtool backfill failed ({done.returncode}): {done.stderr[-2000:]}")

    def start(self) -> None:
        if self._history is not None:
            self.backfill(self._history)
            self._history = None
        self._spawn(
            [
                binary("prometheus"),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
                "--storage.tsdb.retention.time=400d",
                "--log.level=warn",
            ]
        )
        wait_http(f"{self.url}/-/ready", proc=self.proc)
