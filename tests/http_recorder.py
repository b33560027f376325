"""A local HTTP endpoint for workflow tests: answers 200 to every POST and records it.

Serves exposure webhooks (`/exposure`) and webhook notifiers (`/notify`) on
127.0.0.1, each request kept with its idempotency key, `X-Rollout-Event` header and
JSON body, in arrival order."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    path: str
    key: str
    event: str
    body: dict[str, Any]


@dataclass
class Recorder:
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    delays: dict[str, float] = field(default_factory=dict)  # path -> seconds before answering
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self, path: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]


@contextmanager
def serving() -> Iterator[Recorder]:
    rec = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n)
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {"raw": raw.decode("utf-8", "replace")}
            with rec.lock:
                rec.requests.append(Request(
                    path=self.path, key=self.headers.get("Idempotency-Key", ""),
                    event=self.headers.get("X-Rollout-Event", ""), body=body if isinstance(body, dict) else {},
                ))
            time.sleep(rec.delays.get(self.path, 0.0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="http-recorder", daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
