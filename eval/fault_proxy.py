"""A fault-injecting HTTP proxy in front of a model server, for the `faults` evaluation suite.

    python -m eval.fault_proxy --upstream http://127.0.0.1:8000 --port 8100 --delay-s 0.5 --delay-p 0.3 \
        --error-p 0.1 --max-requests 100000 --max-lifetime-s 3600

Forwards every request to the upstream server; with probability delay-p it waits delay-s seconds
first, with probability error-p it answers 500 without forwarding. GET /proxy/health answers
itself (for the launcher); GET /proxy/stats counts what was done. Binds 127.0.0.1 only. Bounded:
it exits by itself after max-requests requests or max-lifetime-s seconds, whichever comes first,
and the evaluation stops it by PID (`start_fault_proxy(...).stop()`).
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` annotation below.
import argparse
import asyncio
import os
import random
import signal
import sys
import threading


def create_app(upstream: str, delay_s: float, delay_p: float, error_p: float, seed: int, max_requests: int):
    import httpx
    from fastapi import FastAPI, Request, Response
    from fastapi.responses import JSONResponse

    app = FastAPI()
    rng = random.Random(seed)
    stats = {"requests": 0, "delayed": 0, "errors": 0, "forwarded": 0}
    client = httpx.AsyncClient(base_url=upstream.rstrip("/"), timeout=None)

    @app.get("/proxy/health")
    async def health():
        return {"ok": True}

    @app.get("/proxy/stats")
    async def get_stats():
        return stats

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def forward(path: str, request: Request):
        stats["requests"] += 1
        if stats["requests"] >= max_requests:  # bounded: the last request it serves stops it
            threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        delay, error = rng.random() < delay_p, rng.random() < error_p
        if delay:
            stats["delayed"] += 1
            await asyncio.sleep(delay_s)
        if error:
            stats["errors"] += 1
            return JSONResponse({"error": {"message": "injected fault: internal server error", "type": "fault"}},
                                status_code=500)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        up = await client.request(request.method, "/" + path, content=await request.body(), headers=headers,
                                  params=dict(request.query_params))
        stats["forwarded"] += 1
        keep = {k: v for k, v in up.headers.items() if k.lower() == "content-type"}
        return Response(content=up.content, status_code=up.status_code, headers=keep)

    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True, help="root URL of the model server (without /v1)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay-s", type=float, default=0.0)
    p.add_argument("--delay-p", type=float, default=0.0)
    p.add_argument("--error-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--max-lifetime-s", type=float, default=3600.0)
    a = p.parse_args(argv)
    import uvicorn

    app = create_app(a.upstream, a.delay_s, a.delay_p, a.error_p, a.seed, a.max_requests)
    deadline = threading.Timer(a.max_lifetime_s, lambda: os.kill(os.getpid(), signal.SIGTERM))
    deadline.daemon = True
    deadline.start()
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning", access_log=False)


def start_fault_proxy(upstream: str, *, delay_s: float = 0.0, delay_p: float = 0.0, error_p: float = 0.0,
                      seed: int = 0, max_requests: int = 100_000, max_lifetime_s: float = 3600.0):
    """Start the proxy as a subprocess on a free 127.0.0.1 port; returns a serving.launch.ServerProcess
    whose base_url (…/v1) goes through the proxy and whose stop() ends it by PID."""
    from serving.launch import REPO_ROOT, ServerProcess, find_free_port, popen_logged

    root = upstream.rstrip("/")
    root = root[: -len("/v1")] if root.endswith("/v1") else root
    port = find_free_port()
    cmd = [sys.executable, "-m", "eval.fault_proxy", "--upstream", root, "--port", str(port), "--delay-s",
           str(delay_s), "--delay-p", str(delay_p), "--error-p", str(error_p), "--seed", str(seed),
           "--max-requests", str(max_requests), "--max-lifetime-s", str(max_lifetime_s)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc, log = popen_logged(cmd, env, prefix="lam-fault-proxy-")
    handle = ServerProcess(proc, "127.0.0.1", port, log, "fault-proxy")
    try:
        return handle.wait_healthy(timeout=60.0, path="/proxy/health")
    except BaseException:
        handle.stop()
        raise


if __name__ == "__main__":
    main()
