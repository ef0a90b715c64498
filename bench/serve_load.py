"""Load test of an OpenAI-compatible server: N requests from C concurrent clients, errors, drops and memory.

    python bench/serve_load.py                                   # tiny random model, 2,000 requests, 64 clients
    python bench/serve_load.py --model runs/quickstart/train/export --requests 2000 --concurrency 64
    python bench/serve_load.py --base-url http://127.0.0.1:8000/v1 --model-name export --pid 12345

Each client is its own HTTP connection (an httpx.AsyncClient) sending requests back to back; the mix is 60%
chat completions, 15% streamed chat, 15% completions, 5% GET /v1/models and 5% deliberately bad requests
(which must be answered 4xx). Reported: statuses, 5xx, dropped connections (transport errors), requests/s,
latency p50/p99, and the server's resident memory after the first and the last half of the requests
(needs the server's pid: known when this script starts the server, else --pid).
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

BAD = [  # (raw body, why it is bad)
    (b'{"model": "MODEL", "messages": [', "truncated JSON"),
    (b'{"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}', "unknown model"),
    (b'{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000000}', "max_tokens"),
    (b'{"model": "MODEL"}', "no messages"),
]


def _tiny_model(tmp: str) -> str:
    path = ROOT / "tests" / "serving" / "serving_tiny_model.py"
    spec = importlib.util.spec_from_file_location("serving_tiny_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return str(mod.build_tiny_model(Path(tmp) / "tiny-lam"))


def _request(i: int, model: str, max_tokens: int) -> tuple[str, str, bytes | dict | None, bool]:
    """(method, path, body, expect_ok) of request i of the mix."""
    msg = [{"role": "user", "content": f"request {i}: go to the red door, then pick up the key"}]
    kind = i % 20
    if kind < 12:
        return "POST", "/chat/completions", {"model": model, "messages": msg, "max_tokens": max_tokens}, True
    if kind < 15:
        body = {"model": model, "messages": msg, "max_tokens": max_tokens, "stream": True}
        return "POST", "/chat/completions", body, True
    if kind < 18:
        return "POST", "/completions", {"model": model, "prompt": f"Observation {i}:", "max_tokens": max_tokens}, True
    if kind == 18:
        return "GET", "/models", None, True
    raw, _ = BAD[(i // 20) % len(BAD)]
    return "POST", "/chat/completions", raw.replace(b"MODEL", model.encode()), False


async def _client(base_url: str, headers: dict, work: asyncio.Queue, model: str, max_tokens: int,
                  results: list, on_done) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as http:
        while True:
            try:
                i = work.get_nowait()
            except asyncio.QueueEmpty:
                return
            method, path, body, expect_ok = _request(i, model, max_tokens)
            kw = {"content": body} if isinstance(body, bytes) else ({"json": body} if body else {})
            t0 = time.perf_counter()
            try:
                r = await http.request(method, path, **kw)
                status, text = r.status_code, r.text
                ok = (200 <= status < 300) if expect_ok else (400 <= status < 500)
                if ok and body and isinstance(body, dict) and body.get("stream"):
                    ok = text.rstrip().endswith("data: [DONE]")
                results.append((i, status, ok, time.perf_counter() - t0, None))
            except httpx.TransportError as e:  # refused, reset, closed mid-response: a dropped connection
                results.append((i, None, False, time.perf_counter() - t0, type(e).__name__))
            on_done()


def run_load(base_url: str, model: str, requests: int = 2000, concurrency: int = 64, max_tokens: int = 8,
             api_key: str | None = None, pid: int | None = None) -> dict:
    """Run the mix against base_url (…/v1); `pid` (the server process) enables the memory figures."""
    import psutil

    proc = psutil.Process(pid) if pid else None
    rss = {}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    results: list = []

    def on_done() -> None:
        if proc is not None and len(results) in (requests // 2, requests):
            rss[len(results)] = proc.memory_info().rss

    async def main() -> float:
        warm: asyncio.Queue = asyncio.Queue()
        for i in range(2 * concurrency):  # warm-up, not counted: first batches, allocator pools
            warm.put_nowait(i)
        await asyncio.gather(*(_client(base_url, headers, warm, model, max_tokens, [], lambda: None)
                               for _ in range(concurrency)))
        if proc is not None:
            rss[0] = proc.memory_info().rss
        work: asyncio.Queue = asyncio.Queue()
        for i in range(requests):
            work.put_nowait(i)
        t0 = time.perf_counter()
        await asyncio.gather(*(_client(base_url, headers, work, model, max_tokens, results, on_done)
                               for _ in range(concurrency)))
        return time.perf_counter() - t0

    wall = asyncio.run(main())
    statuses: dict[str, int] = {}
    for _, status, _, _, err in results:
        key = str(status) if status is not None else f"dropped:{err}"
        statuses[key] = statuses.get(key, 0) + 1
    lat = sorted(d for *_, d, _ in results)
    pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)  # noqa: E731
    out = {"requests": requests, "concurrency": concurrency, "completed": len(results),
           "server_errors_5xx": sum(1 for _, s, *_ in results if s is not None and s >= 500),
           "dropped_connections": sum(1 for *_, err in results if err is not None),
           "unexpected": sum(1 for _, _, ok, _, _ in results if not ok), "statuses": statuses,
           "wall_s": round(wall, 2), "requests_per_s": round(len(results) / wall, 1),
           "latency_p50_s": pct(0.5), "latency_p99_s": pct(0.99)}
    if proc is not None:
        half = requests // 2
        out.update({"rss_mb_after_warmup": round(rss[0] / 2**20, 1),
                    f"rss_mb_after_{half}": round(rss[half] / 2**20, 1),
                    f"rss_mb_after_{requests}": round(rss[requests] / 2**20, 1),
                    "rss_growth_second_half": round(rss[requests] / rss[half] - 1, 4)})
    return out


def _server_mode(base_url: str) -> dict:
    """How the server batches, from its /metrics: prefill ('thread', 'packed', 'between steps') and replicas."""
    import httpx

    try:
        text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=30).text
    except httpx.HTTPError:
        return {"prefill": "unknown"}
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    on = {name for name, v in values.items() if v == "1.0"}
    prefill = "thread" if "lam_prefill_thread" in on else "packed" if "lam_packed_prefill" in on else "between steps"
    return {"prefill": prefill, "replicas": int(float(values.get("lam_replicas", "1")))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="model dir: start a server subprocess for it (default: tiny random model)")
    src.add_argument("--base-url", help="existing server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model-name", default=None, help="served model name (required with --base-url)")
    p.add_argument("--pid", type=int, default=None, help="with --base-url: server pid, for memory figures")
    p.add_argument("--api-key", default=None)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the started server")
    p.add_argument("--out", default=None, help="also write the JSON summary here")
    a = p.parse_args()

    from serving.launch import start_server_subprocess

    handle, tmp = None, tempfile.TemporaryDirectory(prefix="lam-bench-load-")
    try:
        if a.base_url:
            if not a.model_name:
                p.error("--model-name is required with --base-url")
            base_url, model, pid = a.base_url, a.model_name, a.pid
        else:
            handle = start_server_subprocess(a.model or _tiny_model(tmp.name), threads=a.threads,
                                             api_key=a.api_key, timeout=900,
                                             extra_args=["--log-level", "warning"])
            base_url, model, pid = handle.base_url, handle.model_name, handle.pid
        summary = run_load(base_url, model, a.requests, a.concurrency, a.max_tokens, a.api_key, pid)
        summary.update(model=model, base_url=base_url, **_server_mode(base_url))
        line = json.dumps(summary)
        print(line)
        if a.out:
            Path(a.out).write_text(line + "\n")
    finally:
        if handle is not None:
            handle.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
