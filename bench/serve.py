"""Load-test an OpenAI-compatible server: throughput, latency and time-to-first-token under concurrency.

    python bench/serve.py --model runs/sft/final --threads 2 --concurrency 32 --requests 128
    python bench/serve.py --tiny                                   # tiny random model, no files needed
    python bench/serve.py --base-url http://127.0.0.1:8000/v1 --api-key $LAM_API_KEY --model-name final

With --model/--tiny the server is started as a subprocess (serving.launch) and stopped afterwards.
Prints one JSON summary line (also written to --out if given).
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def _tiny_model(tmp: str) -> str:
    """Build the random tiny model used by tests/serving (kept there so tests own it)."""
    path = ROOT / "tests" / "serving" / "serving_tiny_model.py"
    spec = importlib.util.spec_from_file_location("serving_tiny_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return str(mod.build_tiny_model(Path(tmp) / "tiny-lam"))


async def _one(client, model: str, i: int, max_tokens: int, stream: bool) -> dict:
    messages = [{"role": "user", "content": f"Task {i}: go to the red door, then pick up the key."}]
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    if stream:
        resp = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                    temperature=0, stream=True,
                                                    stream_options={"include_usage": True})
        async for chunk in resp:
            if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                ttft = time.perf_counter() - t0
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
    else:
        resp = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                    temperature=0)
        tokens = resp.usage.completion_tokens
    return {"latency": time.perf_counter() - t0, "ttft": ttft, "tokens": tokens}


async def run_load(base_url: str, api_key: str, model: str, requests: int, concurrency: int,
                   max_tokens: int, stream: bool) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(concurrency)
    errors = 0

    async def guarded(i):
        nonlocal errors
        async with sem:
            try:
                return await _one(client, model, i, max_tokens, stream)
            except openai.APIError:
                errors += 1
                return None

    await _one(client, model, -1, 4, False)  # warm-up (first forward pays one-off costs)
    t0 = time.perf_counter()
    results = [r for r in await asyncio.gather(*(guarded(i) for i in range(requests))) if r]
    wall = time.perf_counter() - t0
    await client.close()
    lat = sorted(r["latency"] for r in results) or [0.0]
    ttfts = sorted(r["ttft"] for r in results if r["ttft"] is not None)
    pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None  # noqa: E731
    out_tokens = sum(r["tokens"] for r in results)
    return {"requests": requests, "ok": len(results), "errors": errors, "concurrency": concurrency,
            "max_tokens": max_tokens, "wall_s": round(wall, 3), "req_per_s": round(len(results) / wall, 2),
            "output_tok_per_s": round(out_tokens / wall, 1), "latency_p50_s": round(statistics.median(lat), 3),
            "latency_p95_s": round(pct(lat, 0.95), 3),
            "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model dir: start a server subprocess for it")
    src.add_argument("--tiny", action="store_true", help="build and serve the tiny random test model")
    src.add_argument("--base-url", help="existing server, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model-name", default=None, help="served model name (default: basename of --model)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads of the started server")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--backend", default="transformers", choices=["auto", "transformers", "vllm"])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--no-stream", action="store_true", help="measure non-streaming requests (no TTFT)")
    p.add_argument("--out", default=None, help="also write the JSON summary here")
    a = p.parse_args()

    from serving.launch import default_model_name, start_server_subprocess

    handle, tmp = None, tempfile.TemporaryDirectory(prefix="lam-bench-")
    try:
        if a.base_url:
            base_url, model = a.base_url, a.model_name
            if not model:
                p.error("--model-name is required with --base-url")
        else:
            model_dir = _tiny_model(tmp.name) if a.tiny else a.model
            model = a.model_name or default_model_name(model_dir)
            handle = start_server_subprocess(model_dir, threads=a.threads, max_batch_size=a.max_batch_size,
                                             api_key=a.api_key, model_name=model, backend=a.backend,
                                             timeout=900)
            base_url = handle.base_url
        summary = asyncio.run(run_load(base_url, a.api_key, model, a.requests, a.concurrency, a.max_tokens,
                                       not a.no_stream))
        summary.update(model=model, base_url=base_url)
        if handle is not None:
            import httpx
            metrics = httpx.get(handle.root_url + "/metrics").text
            batches = [ln for ln in metrics.splitlines() if ln.startswith("lam_batch_size_")]
            summary["batch_metrics"] = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in batches
                                        if "_count" in ln or "_sum" in ln}
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
