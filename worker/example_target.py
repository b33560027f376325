"""An example exposure target and notification receiver, for demos and as a reference.

    python -m worker.example_target --port 8000

It implements the receiving side of the webhook contract (docs/targets.md):

- `POST /exposure`: verifies `X-Rollout-Signature` with the secret in the env var
  named by `--secret-env` (default `ROLLOUT_WEBHOOK_SECRET`; unsigned requests are
  accepted only when that variable is unset), applies the change once per
  (`run_id`, `Idempotency-Key`) in memory, answers 200 for a new or repeated key
  (the same answer again), 401 for a bad signature, 400 for a malformed body;
- `GET /exposure`: the scope and authority currently in force, per rollout (JSON);
- `POST /notify`: accepts (and verifies, when signed) notifications; `GET /notifications`
  lists them;
- `GET /`: a one-screen text summary.

`running(app)` starts any ASGI app on 127.0.0.1 in the current event loop (tests, demo).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from activities.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, SignatureError, verify_signature

DEFAULT_SECRET_ENV = "ROLLOUT_WEBHOOK_SECRET"  # noqa: S105 - an env var name, not a secret


@dataclass
class ExampleState:
    """What the example target has applied, in memory."""

    secret: str | None
    current: dict[str, dict[str, Any]] = field(default_factory=dict)  # rollout -> state in force
    answers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (run, key) -> answer
    applied: list[dict[str, Any]] = field(default_factory=list)  # every change applied, in order
    notifications: list[dict[str, Any]] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


async def _verified_json(request: Request, state: ExampleState) -> dict[str, Any] | Response:
    body = await request.body()
    if state.secret is not None:
        try:
            verify_signature(body, request.headers.get(SIGNATURE_HEADER), state.secret)
        except SignatureError as exc:
            return JSONResponse({"error": f"signature: {exc}"}, status_code=401)
    try:
        doc = json.loads(body)
    except ValueError:
        return JSONResponse({"error": "body is not JSON"}, status_code=400)
    if not isinstance(doc, dict):
        return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
    return doc


def apply_change(state: ExampleState, doc: dict[str, Any], key: str) -> dict[str, Any]:
    """Apply a verified change once per (run, key); return the answer to send."""
    run = str(doc.get("run_id") or "")
    seen = state.answers.get((run, key))
    if seen is not None:
        return {**seen, "replayed": True}
    rollout = str(doc["rollout"])
    now = state.current.get(rollout)
    if now is not None and now["run_id"] == run and int(now["seq"]) > int(doc["seq"]):
        answer = {"applied": False, "stale": True, "current_seq": now["seq"]}
    else:
        in_force = {
            "run_id": run,
            "seq": doc["seq"],
            "kind": doc.get("kind"),
            "stage": doc.get("stage"),
            "scope": doc.get("scope"),
            "authority": doc.get("authority", {}),
            "frozen": doc.get("frozen", False),
            "plan_hash": doc.get("plan_hash"),
            "reason": doc.get("reason"),
            "applied_at": datetime.now(UTC).isoformat(),
        }
        state.current[rollout] = in_force
        state.applied.append({"rollout": rollout, "idempotency_key": key, **in_force})
        scope = doc.get("scope") or {}
        print(
            f"example-target: {rollout} #{doc['seq']} {doc.get('kind')}: stage {doc.get('stage')}, "
            f"{scope.get('percent')}% of {scope.get('segments') or 'all segments'}",
            flush=True,
        )
        answer = {"applied": True}
    state.answers[(run, key)] = answer
    return answer


def create_app(secret: str | None) -> Starlette:
    state = ExampleState(secret=secret)

    async def post_exposure(request: Request) -> Response:
        doc = await _verified_json(request, state)
        if isinstance(doc, Response):
            return doc
        key = request.headers.get(IDEMPOTENCY_HEADER) or doc.get("idempotency_key")
        if not key or "rollout" not in doc or not isinstance(doc.get("seq"), int):
            return JSONResponse({"error": "need Idempotency-Key, rollout and seq"}, status_code=400)
        async with state.lock:
            answer = apply_change(state, doc, str(key))
        return JSONResponse(answer)

    async def get_exposure(request: Request) -> Response:
        return JSONResponse(state.current)

    async def post_notify(request: Request) -> Response:
        doc = await _verified_json(request, state)
        if isinstance(doc, Response):
            return doc
        state.notifications.append(doc)
        print(f"example-target: notification {doc.get('event')}: {doc.get('summary')}", flush=True)
        return JSONResponse({"received": True})

    async def get_notifications(request: Request) -> Response:
        return JSONResponse(state.notifications)

    async def index(request: Request) -> Response:
        lines = ["example exposure target"]
        for rollout, now in sorted(state.current.items()):
            scope = now.get("scope") or {}
            lines.append(
                f"{rollout}: #{now['seq']} stage {now['stage']} {scope.get('percent')}% "
                f"of {scope.get('segments') or 'all segments'}{' (frozen)' if now['frozen'] else ''}"
            )
        lines.append(f"{len(state.notifications)} notification(s) received")
        return PlainTextResponse("\n".join(lines) + "\n")

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/exposure", post_exposure, methods=["POST"]),
            Route("/exposure", get_exposure, methods=["GET"]),
            Route("/notify", post_notify, methods=["POST"]),
            Route("/notifications", get_notifications, methods=["GET"]),
        ]
    )
    app.state.example = state
    return app


@contextlib.asynccontextmanager
async def running(app: Any, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` with uvicorn in this event loop; yield its base URL; stop on exit."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", ws="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped while starting")
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()
        yield f"http://{host}:{bound[1]}"
    finally:
        server.should_exit = True
        await task


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.example_target", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--secret-env", default=DEFAULT_SECRET_ENV, help="env var holding the HMAC secret (unset: accept unsigned)"
    )
    args = parser.parse_args(argv)
    secret = os.environ.get(args.secret_env) or None
    if secret is None:
        print(f"example-target: {args.secret_env} is not set; accepting unsigned requests", file=sys.stderr)
    print(f"example-target: listening on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(create_app(secret), host=args.host, port=args.port, log_level="warning", ws="none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
