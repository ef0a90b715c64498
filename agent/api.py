"""The agent HTTP API: sessions over the one episode runner, persisted in SQLite.

    lam agent serve --host 127.0.0.1 --port 8100 --db runs/agent/sessions.db [--api-key KEY:MAX_LIVE ...]
    lam agent serve --workers 4            # sessions' environments and policies in 4 Ray actors (local Ray)
    lam agent serve --ray                  # ... in Ray actors, one per CPU of the cluster (RAY_ADDRESS or local)

    POST   /v1/sessions               {env, level?, seed?, split?, policy?, limits?, runner?, run?} -> 201 session
    GET    /v1/sessions               every session with its status (yours, with API keys)
    GET    /v1/sessions/{id}          status, claimed and verified outcome, and the transcript (steps);
                                      with --verifier, a finished one's verification {score, model, flagged}
    POST   /v1/sessions/{id}/step     one step of an idle session
    POST   /v1/sessions/{id}/run      run an idle session to completion in the background (?wait=true blocks)
    GET    /v1/sessions/{id}/events   server-sent events: one `step` event per step, then `end`
    DELETE /v1/sessions/{id}          cancel

policy: {"kind": "expert"} | {"kind": "random", "seed": 0} | {"kind": "scripted", "actions": [...]} |
{"kind": "model", "base_url": "http://127.0.0.1:8000/v1", "model": "export", "timeout_s": 60, "retries": 3}.
limits: {"max_steps", "time_limit_s", "max_retries"}; runner: {"memory", "safety", "confirm", "history_window"}.
Errors are JSON {"error": {"code", "message"}} with a specific 4xx status; a session whose
environment or policy breaks ends as failed or with end_reason policy_error, and nothing else stops.
A restart (SIGKILL included) rebuilds idle and running sessions from the store (agent/sessions.py);
one server process owns a store (`<db>.lock`): a second one on the same --db exits with an error.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, create_model

from agent.console.web import mount_console
from agent.runner_config import RunnerConfig
from agent.sessions import TERMINAL, ApiError, SessionManager, SessionStore, StoreOwned


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The request splits RunnerConfig (agent/runner_config.py) in two objects, each field optional (absent or
# null: the runner's default), and bounds what a public caller may ask for (internal runs are not capped):
# so these are subsets derived from RunnerConfig's fields, not copies of them.
LIMITS = {"max_steps": {"ge": 1, "le": 100_000}, "time_limit_s": {"gt": 0}, "max_retries": {"ge": 0, "le": 10}}
OPTION_BOUNDS = {"history_window": {"ge": 0}}


def _optional(names, bounds: dict) -> dict:
    return {n: (RunnerConfig.model_fields[n].annotation | None, Field(None, **bounds.get(n, {}))) for n in names}


Limits = create_model("Limits", __base__=_Strict, **_optional(LIMITS, LIMITS))
RunnerOptions = create_model("RunnerOptions", __base__=_Strict,  # every runner setting that is not a limit
                             **_optional([n for n in RunnerConfig.model_fields if n not in LIMITS], OPTION_BOUNDS))


class CreateSession(_Strict):
    env: str = Field(min_length=1)
    level: str | None = None
    seed: int = Field(0, ge=0)
    split: Literal["train", "test", "all"] = "test"
    policy: dict[str, Any] = Field(default_factory=lambda: {"kind": "expert"})
    limits: Limits = Field(default_factory=Limits)
    runner: RunnerOptions = Field(default_factory=RunnerOptions)
    run: bool = True  # start running to completion at once; False: drive it with /step


class _JsonBodies:
    """Every request body this API takes is JSON. `curl -d '{...}'` without `-H 'Content-Type:
    application/json'` labels it form-urlencoded, which FastAPI answers with a 422 blaming a missing field:
    answer 415 naming the header instead. Such bodies are not read as JSON, since a browser page may send
    form and text/plain POSTs to 127.0.0.1 without asking first (cross-site request forgery)."""

    _FORMS = (b"application/x-www-form-urlencoded", b"multipart/form-data", b"text/plain")

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            ctype = dict(scope["headers"]).get(b"content-type", b"")
            if ctype.split(b";")[0].strip().lower() in self._FORMS:
                body = json.dumps({"error": {"code": "unsupported_media_type", "message": (
                    f"request bodies are JSON: send the header 'Content-Type: application/json' "
                    f"(got {ctype.decode(errors='replace')!r}; curl: -H 'Content-Type: application/json')")}}).encode()
                await send({"type": "http.response.start", "status": 415,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def create_app(db_path: str, api_keys: dict[str, int] | None = None, max_live: int = 64, host=None,
               verifier: str | None = None, verifier_mode: str = "flag"):
    """The app over the store at `db_path` (StoreOwned while another process owns it). `host`: where
    sessions run (agent/session_host.py); None runs them in this process. `verifier`: an outcome verifier
    checkpoint whose score finished sessions carry (agent/verification.py)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    os.makedirs(os.path.dirname(os.path.abspath(db_path)), exist_ok=True)
    scorer = None
    if verifier:  # loaded (and a wrong checkpoint refused) before the server listens
        from agent.verification import SessionVerifier

        scorer = SessionVerifier.load(verifier, db_path, verifier_mode)
    manager = SessionManager(SessionStore(db_path), api_keys, max_live, memory_path=db_path + ".memory.jsonl",
                             host=host, verifier=scorer)
    app = FastAPI(title="lam agent API")
    app.add_middleware(_JsonBodies)
    app.state.manager = manager

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return JSONResponse({"error": {"code": e.code, "message": e.message}}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        parts = []
        for err in e.errors()[:3]:
            if err.get("type") == "json_invalid":
                parts.append(f"the request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
                continue
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse({"error": {"code": "invalid_request", "message": "; ".join(parts)}}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):  # a bug answers 500 for this request; the server goes on
        return JSONResponse({"error": {"code": "internal", "message": f"{type(e).__name__}: {e}"}}, status_code=500)

    def key(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
        return manager.owner(token)

    async def call(fn, *args):
        return await asyncio.to_thread(fn, *args)  # steps run the policy: keep the event loop free

    @app.get("/health")
    async def health():
        return {"status": "ok", "live_sessions": len(manager.live), "rebuilt": manager.rebuilt,
                "recovered_interrupted": manager.recovered, "host": type(manager.host).__name__}

    @app.post("/v1/sessions", status_code=201)
    async def create(body: CreateSession, request: Request):
        req = body.model_dump()
        req["limits"] = {k: v for k, v in req["limits"].items() if v is not None}
        req["runner"] = {k: v for k, v in req["runner"].items() if v is not None}
        return await call(manager.create, req, key(request))

    @app.get("/v1/sessions")
    async def list_sessions(request: Request):
        return {"sessions": manager.list(key(request))}

    @app.get("/v1/sessions/{sid}")
    async def get(sid: str, request: Request):
        return manager.describe(sid, key(request))

    @app.post("/v1/sessions/{sid}/step")
    async def step(sid: str, request: Request):
        return await call(manager.step, sid, key(request))

    @app.post("/v1/sessions/{sid}/run", status_code=202)
    async def run(sid: str, request: Request, wait: bool = False):
        k = key(request)
        out = await call(manager.run, sid, k)
        while wait and out["status"] not in TERMINAL:
            await asyncio.sleep(0.05)
            out = manager.describe(sid, k, steps=False)
        return manager.describe(sid, k) if wait else out

    @app.delete("/v1/sessions/{sid}")
    async def cancel(sid: str, request: Request):
        return await call(manager.cancel, sid, key(request))

    @app.get("/v1/sessions/{sid}/events")
    async def events(sid: str, request: Request):
        k = key(request)
        manager.describe(sid, k, steps=False)  # 404 before the stream starts

        async def stream():
            last = -1
            while True:
                for s in manager.store.steps(sid, after=last):
                    last = s["step"]
                    yield f"event: step\ndata: {json.dumps(s, default=str)}\n\n"
                row = manager.describe(sid, k, steps=False)
                if row["status"] in TERMINAL and not manager.store.steps(sid, after=last):
                    yield f"event: end\ndata: {json.dumps(row, default=str)}\n\n"
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream")

    mount_console(app, key)  # the web console at / (agent/console): a page over the routes above

    @app.on_event("shutdown")
    def _shutdown():
        manager.shutdown()

    return app


def parse_keys(values: list[str]) -> dict[str, int]:
    """["k1:4", "k2"] -> {"k1": 4, "k2": 8}; also read from LAM_AGENT_API_KEYS (comma-separated)."""
    out = {}
    for v in values:
        k, _, n = v.partition(":")
        if not k:
            raise ValueError(f"bad --api-key {v!r}: expected KEY or KEY:MAX_LIVE_SESSIONS")
        out[k] = int(n) if n else 8
    return out


def add_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The server's flags; `lam agent serve` and `python -m agent.api` share them."""
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--db", default="runs/agent/sessions.db", help="SQLite file; sessions survive restarts")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY[:MAX_LIVE]",
                   help="require this key (repeatable); MAX_LIVE caps its live sessions (also LAM_AGENT_API_KEYS)")
    p.add_argument("--max-live", type=int, default=64, help="live sessions in total")
    p.add_argument("--ray", action="store_true", help="run sessions' environments and policies in Ray actors "
                   "(RAY_ADDRESS, else a local Ray started here); this process routes and persists")
    p.add_argument("--workers", type=int, default=0, help="Ray actors for sessions (starts local Ray; implies "
                   "--ray); 0 with --ray: one per CPU of the cluster")
    p.add_argument("--verifier", default=None, metavar="PATH",
                   help="an outcome verifier (lam train-verifier OUT/best): finished sessions get verification "
                        "{score, model, flagged}")
    p.add_argument("--verifier-mode", default="flag", choices=["flag", "confirm"],
                   help="confirm: a flagged session also says confirm: true (ask the user before acting on it)")
    return p


def serve(a: argparse.Namespace, host=None) -> None:
    """Run the server; `host` is where sessions run (`lam agent serve --ray` passes the Ray fleet's)."""
    import sys

    import uvicorn

    if (getattr(a, "ray", False) or getattr(a, "workers", 0)) and host is None:
        sys.exit("lam agent serve: --ray/--workers need the Ray fleet: run `lam agent serve --ray` "
                 "(or python -m data_collection.session_fleet --ray), not python -m agent.api")
    env_keys = [k for k in os.environ.get("LAM_AGENT_API_KEYS", "").split(",") if k]
    keys = parse_keys(a.api_key + env_keys)
    if a.host not in ("127.0.0.1", "localhost", "::1") and not keys:
        print(f"warning: serving the agent API on {a.host} without API keys", flush=True)
    try:
        app = create_app(a.db, keys or None, a.max_live, host=host, verifier=a.verifier,
                         verifier_mode=a.verifier_mode)
    except StoreOwned as e:
        sys.exit(f"lam agent serve: error: {e}")
    m = app.state.manager
    print(f"agent API on http://{a.host}:{a.port}/v1/sessions (db {a.db}; sessions run in {type(m.host).__name__}; "
          f"{m.rebuilt} live sessions rebuilt, {m.recovered} interrupted, in {m.rebuild_s:.1f}s)", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="lam agent serve", description="the agent API (sessions over the episode runner)")
    serve(add_args(p).parse_args(argv))


if __name__ == "__main__":
    main()
