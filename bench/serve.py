"""Agent throughput through the serving stack: 32 BabyAI agents against one server, batched vs one at a time.

    python bench/serve.py                          # trained model if runs/quickstart/train/export exists, else tiny
    python bench/serve.py --model runs/quickstart/train/export --rounds 2 --seconds 30 --dtype bfloat16
    python bench/serve.py --tiny --rounds 1 --out /tmp/serve.json
    python bench/serve.py --tiny --preset small --dtype bfloat16 --phases serial,serial:2,batched
                                                   # also a one-at-a-time server on 2 torch threads, same run
    python bench/serve.py --tiny --preset small --dtype bfloat16 --threads 2 --phases serial:2,batched,batched-unpacked
                                                   # 2 threads each: packed prefill vs prefill between decode steps
    python bench/serve.py --tiny --preset small --dtype bfloat16 --phases serial,serial:2,batched,batched-1replica
                                                   # one replica per core vs one batch with a prefill thread

Each of `--clients` agents (threads, spread over `--client-procs` processes like a fleet of agent workers)
runs real episodes (agent.episode.run_episode + agent.policies.ModelPolicy over the official `openai`
client + envs.babyai.BabyAIEnv) against embedded-backend servers started as subprocesses: one with
`--max-batch-size 1` (every request served alone, the baseline) and one with `--max-batch-size CLIENTS`
(continuous batching; with `--threads 1` on a machine with more cores it runs one replica, a batch with a
worker thread of its own, per core, see `--replicas`). The same clients and tasks run against each in turn,
`--rounds` times, so load from other processes on the machine hits both alike; each turn has a warm-up,
then a measured window. The
figure of merit is agent steps/s (a step is one environment decision, including its grounding retries),
with request latency p50/p99. Any model works: a random model's invalid outputs are retried, then counted
as invalid steps; a trained one mostly answers in one short request.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
TRAINED = ROOT / "runs" / "quickstart" / "train" / "export"
LEVEL = "BabyAI-GoToLocal-v0"


def build_babyai_random_model(out_dir: str | Path, episodes: int = 40, preset: str = "tiny") -> Path:
    """A random Llama of a size preset (default `tiny`, the quickstart's size) with a BabyAI tokenizer and chat template.

    The tokenizer is trained, as in training/, on prompts rendered from a few BabyAI-bot episodes, so prompt
    lengths match what the quickstart model sees. Weights are random: outputs are mostly invalid actions.
    """
    from agent.episode import RunnerConfig, run_episode
    from agent.policies import ExpertPolicy
    from agent.prompt import Turn, render_training_chunks
    from envs.babyai import BabyAIEnv
    from envs.base import Task
    from training.model import build_model
    from training.tokenizer import train_tokenizer

    env, texts = BabyAIEnv(), []
    for seed in range(episodes):
        ep = run_episode(env, ExpertPolicy(), Task("babyai", LEVEL, seed), RunnerConfig(max_steps=64))
        turns = [Turn(s.state, s.prev_feedback, s.action) for s in ep.steps]
        for chunk in render_training_chunks(ep.request, turns, env.action_names(), 8):
            texts.append("".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in chunk))
    tok = train_tokenizer(texts, vocab_size=2048)
    model = build_model(preset, vocab_size=len(tok), max_positions=1024)
    model.generation_config.eos_token_id = model.config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id = tok.pad_token_id
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


class _TimedPolicy:
    """Wraps ModelPolicy: logs (end time, latency, step key) of every request it makes."""

    def __init__(self, inner, log: list, client: int):
        self.inner, self.name, self.log, self.client, self.episode = inner, inner.name, log, client, -1

    def begin(self, env, task) -> None:
        self.episode += 1
        self.inner.begin(env, task)

    def act(self, messages, env, step, attempt) -> str:
        t0 = time.monotonic()
        out = self.inner.act(messages, env, step, attempt)
        t1 = time.monotonic()
        self.log.append((t1, t1 - t0, (self.client, self.episode, step)))
        return out


def _client_threads(ids: list[int], base_url: str, model: str, t_off: float, max_tokens: int,
                    temperature: float, max_retries: int) -> tuple[list, list]:
    """Agents `ids`, one thread each, until time.monotonic() reaches t_off; returns (request log, errors)."""
    from agent.episode import RunnerConfig, run_episode
    from agent.policies import ModelPolicy
    from envs.babyai import BabyAIEnv
    from envs.base import Task
    from envs.registry import TEST_SEEDS

    log, errors = [], []

    def client(c: int) -> None:
        env = BabyAIEnv()
        policy = _TimedPolicy(ModelPolicy(base_url, model, temperature=temperature, max_tokens=max_tokens,
                                          timeout_s=600, retries=0), log, c)
        k = 0
        while time.monotonic() < t_off:  # the same task sequence per client in every phase
            task = Task("babyai", LEVEL, TEST_SEEDS[0] + 1000 * c + k, split="test")
            cfg = RunnerConfig(max_steps=64, max_retries=max_retries, time_limit_s=t_off - time.monotonic())
            ep = run_episode(env, policy, task, cfg)
            if ep.error:
                errors.append(ep.error)
                return
            k += 1

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return log, errors


def run_clients(base_url: str, model: str, clients: int, warmup_s: float, seconds: float, max_tokens: int,
                temperature: float, max_retries: int, procs: int = 1) -> dict:
    """`clients` agents (threads spread over `procs` processes, like a fleet of agent workers) for
    warmup_s + seconds; statistics over the measured window only.

    A step that took k requests counts 1/k for each request finished inside the window, so steps cut by the
    window's edges count in proportion (serial steps can take longer than the window)."""
    t_on = time.monotonic() + warmup_s
    t_off = t_on + seconds
    args = (base_url, model, t_off, max_tokens, temperature, max_retries)
    groups = [list(range(clients))[i::procs] for i in range(procs)]
    if procs == 1:
        log, errors = _client_threads(groups[0], *args)
    else:  # one Python process holds one GIL: the client side alone could not keep a batched server busy
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Import here, before forking: four children importing minigrid and openai at once on a busy machine
        # took longer than the warm-up.
        import agent.episode, agent.policies, envs.babyai, envs.registry, openai  # noqa: E401, F401

        with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_client_threads, groups, *[[x] * procs for x in args]))
        log = [x for part, _ in parts for x in part]
        errors = [e for _, part in parts for e in part]
    per_step: dict = {}
    for _, _, key in log:
        per_step[key] = per_step.get(key, 0) + 1
    window = [(d, key) for t, d, key in log if t_on <= t < t_off]
    return {"seconds": seconds, "steps": sum(1 / per_step[key] for _, key in window),
            "latencies": [d for d, _ in window], "errors": errors}


def summarize(runs: list[dict]) -> dict:
    """Pool the measured windows of one phase (several rounds) into rates and latency percentiles."""
    seconds = sum(r["seconds"] for r in runs)
    steps = sum(r["steps"] for r in runs)
    lat = sorted(d for r in runs for d in r["latencies"])
    pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None  # noqa: E731
    errors = [e for r in runs for e in r["errors"]]
    return {"agent_steps_per_s": round(steps / seconds, 3), "requests_per_s": round(len(lat) / seconds, 2),
            "agent_steps": round(steps, 1), "requests": len(lat), "measured_s": seconds,
            "latency_p50_s": pct(0.5), "latency_p99_s": pct(0.99),
            "latency_mean_s": round(statistics.fmean(lat), 3) if lat else None,
            "n_errors": len(errors), "errors": errors[:3]}


def _server_stats(root_url: str) -> dict:
    """Rows per forward, forward time per phase, padding and prefix-cache hits, from the server's /metrics."""
    import httpx

    v = {}
    for line in httpx.get(root_url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(("lam_batch_size_sum", "lam_batch_size_count", "lam_prefix_cache", "lam_worker_",
                            "lam_prefill_thread", "lam_packed_prefill", "lam_replicas")):
            name, value = line.rsplit(" ", 1)
            v[name] = float(value)
    out = {"prefix_cache_hit_ratio": round(v.get("lam_prefix_cache_hit_ratio", 0.0), 3),
           "prefill_thread": bool(v.get("lam_prefill_thread", 0.0)),
           "packed_prefill": bool(v.get("lam_packed_prefill", 0.0)), "replicas": int(v.get("lam_replicas", 1))}
    for phase in ("prefill", "decode"):
        n = v.get(f'lam_batch_size_count{{phase="{phase}"}}')
        if n:
            out[f"{phase}_forwards"] = int(n)
            out[f"{phase}_mean_rows"] = round(v[f'lam_batch_size_sum{{phase="{phase}"}}'] / n, 2)
            out[f"{phase}_ms_per_forward"] = round(1000 * v.get(f"lam_worker_{phase}_s", 0.0) / n, 1)
    if v.get("lam_worker_requests"):  # prompt tokens left to prefill after the prefix cache, per request
        out["prefill_tokens_per_request"] = round(v.get("lam_worker_prefill_tokens", 0.0) / v["lam_worker_requests"], 1)
    if v.get("lam_worker_prefill_padded_tokens"):
        out["prefill_padding_share"] = round(1 - v["lam_worker_prefill_tokens"]
                                             / v["lam_worker_prefill_padded_tokens"], 3)
    if v.get("lam_worker_decode_kv_padded_tokens"):
        # Padding in the running batch's KV, and the part of it decode attention still read.
        out["decode_kv_padding_share"] = round(1 - v["lam_worker_decode_kv_tokens"]
                                               / v["lam_worker_decode_kv_padded_tokens"], 3)
        read = v.get("lam_worker_decode_kv_read_tokens") or v["lam_worker_decode_kv_padded_tokens"]
        out["decode_kv_read_padding_share"] = round(1 - v["lam_worker_decode_kv_tokens"] / read, 3)
    return out


def emit(summary: dict, out: str | None) -> None:
    """The JSON summary on stdout (one line), and in `out` when given."""
    line = json.dumps(summary)
    print(line)
    if out:
        Path(out).write_text(line + "\n")


BATCHED_KINDS = ("batched", "batched-unpacked", "batched-1replica")


def parse_phases(spec: str, clients: int, threads: int) -> dict[str, tuple[int, int]]:
    """'serial,serial:2,batched' -> {phase: (max batch size, torch threads)}.

    'serial' serves one request at a time on --threads threads, 'serial:N' on N, 'batched' batches up to
    `clients` rows on --threads ('batched:N' on N); 'batched-unpacked[:N]' is the same with
    `--packed-prefill off`, 'batched-1replica[:N]' with `--replicas 1`."""
    out = {}
    for name in (p.strip() for p in spec.split(",") if p.strip()):
        kind, _, n = name.partition(":")
        if kind in ("serial", *BATCHED_KINDS) and (not n or n.isdigit() and int(n) > 0):
            out[name] = (1 if kind == "serial" else clients, int(n) if n else threads)
        else:
            raise SystemExit("Error: --phases takes serial, batched, batched-unpacked and batched-1replica, each "
                             "optionally :N "
                             f"(N torch threads); got {name!r}")
    if not out:
        raise SystemExit("Error: --phases is empty")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help=f"model dir (default: {TRAINED.relative_to(ROOT)} if it exists, else --tiny)")
    src.add_argument("--tiny", action="store_true", help="build a random tiny-preset model with a BabyAI tokenizer")
    p.add_argument("--preset", default="tiny", help="with --tiny: the size preset of the random model "
                   "(training/model.py PRESETS; `small` is ~25M parameters, where model compute outweighs "
                   "per-request overhead)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--client-procs", type=int, default=4, help="processes the client threads are spread over")
    p.add_argument("--seconds", type=float, default=30.0, help="measured window per phase and round")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds run before each window opens")
    p.add_argument("--rounds", type=int, default=2, help="serial, batched, serial, batched, ...")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    p.add_argument("--prefill-thread", default="auto", choices=["auto", "on", "off"],
                   help="the batched server's --prefill-thread (auto: on with --threads 1 and another core free)")
    p.add_argument("--packed-prefill", default="auto", choices=["auto", "off"],
                   help="the batched server's --packed-prefill (used without a prefill thread)")
    p.add_argument("--replicas", default="auto",
                   help="the batched server's --replicas (auto: one per core with --threads 1)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="server dtype (auto: float32 on CPU; bfloat16 uses AMX where the CPU has it)")
    p.add_argument("--max-tokens", type=int, default=16, help="ModelPolicy's max_tokens (its default: 16)")
    p.add_argument("--temperature", type=float, default=0.0, help="first attempt; retries sample at >= 0.7")
    p.add_argument("--max-retries", type=int, default=2, help="grounding retries per step (eval's default: 2)")
    p.add_argument("--phases", default="serial,batched",
                   help="comma list of serial, serial:N (one request at a time on N torch threads), batched; "
                        "e.g. serial,serial:2,batched compares both baselines in one run")
    p.add_argument("--out", default=None, help="also write the JSON summary here")
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the env and client side need no thread pools

    from serving.launch import start_server_subprocess

    tmp = tempfile.TemporaryDirectory(prefix="lam-bench-serve-")
    model_dir = a.model or (str(TRAINED) if not a.tiny and (TRAINED / "config.json").exists() else None)
    built = model_dir is None
    if built:
        t0 = time.perf_counter()
        model_dir = str(build_babyai_random_model(Path(tmp.name) / f"babyai-{a.preset}", preset=a.preset))
        print(f"built random {a.preset} BabyAI model in {time.perf_counter() - t0:.1f}s: {model_dir}", file=sys.stderr)
    summary = {"model": model_dir, "random_preset": a.preset if built else None, "clients": a.clients,
               "client_procs": a.client_procs, "dtype": a.dtype,
               "seconds": a.seconds, "rounds": a.rounds, "threads": a.threads,
               "prefill_thread": a.prefill_thread, "packed_prefill": a.packed_prefill, "replicas": a.replicas,
               "max_tokens": a.max_tokens,
               "temperature": a.temperature, "level": LEVEL,
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": f"{platform.machine()} {os.cpu_count()} cpus", "load_start": os.getloadavg()[0]}
    phases = parse_phases(a.phases, a.clients, a.threads)
    servers, runs = {}, {phase: [] for phase in phases}
    try:
        for phase, (batch, threads) in phases.items():  # all servers stay up; idle ones wait on a condition
            packed = "off" if phase.startswith("batched-unpacked") else a.packed_prefill
            replicas = "1" if phase.startswith("batched-1replica") else a.replicas
            extra = (["--prefill-thread", a.prefill_thread, "--packed-prefill", packed, "--replicas", replicas]
                     if batch > 1 else [])
            servers[phase] = start_server_subprocess(model_dir, threads=threads, max_batch_size=batch, timeout=900,
                                                     extra_args=["--log-level", "warning", "--dtype", a.dtype, *extra])
        for rnd in range(a.rounds):  # alternate phases so load from other processes hits both alike
            for phase in phases:
                h = servers[phase]
                runs[phase].append(run_clients(h.base_url, h.model_name, a.clients, a.warmup, a.seconds,
                                               a.max_tokens, a.temperature, a.max_retries, a.client_procs))
                r = summarize(runs[phase][-1:])
                print(f"round {rnd + 1} {phase:9s}: {r['agent_steps_per_s']:7.2f} agent steps/s "
                      f"{r['requests_per_s']:7.2f} requests/s  latency p50 {r['latency_p50_s']}s "
                      f"p99 {r['latency_p99_s']}s", file=sys.stderr)
        for phase, (batch, threads) in phases.items():
            summary[phase] = {**summarize(runs[phase]), "max_batch_size": batch, "threads": threads,
                              **_server_stats(servers[phase].root_url)}
    finally:
        for h in servers.values():
            h.stop()
        tmp.cleanup()
    summary["load_end"] = os.getloadavg()[0]
    serials = [p for p, (batch, _) in phases.items() if batch == 1]
    for batched in (p for p, (batch, _) in phases.items() if batch > 1):
        for serial in serials:  # each one-at-a-time server against each batched one, same run
            if not summary[serial]["agent_steps_per_s"]:
                continue
            ratio = round(summary[batched]["agent_steps_per_s"] / summary[serial]["agent_steps_per_s"], 2)
            key = "speedup" if serial == "serial" else f"speedup_vs_{serial}"
            summary[key if batched == "batched" else f"{batched}_{key}"] = ratio
            print(f"{batched} / {serial} agent steps/s: {ratio}x  (latency p50/p99: {serial} "
                  f"{summary[serial]['latency_p50_s']}/{summary[serial]['latency_p99_s']}s, {batched} "
                  f"{summary[batched]['latency_p50_s']}/{summary[batched]['latency_p99_s']}s)",
                  file=sys.stderr)
    emit(summary, a.out)


if __name__ == "__main__":
    main()
