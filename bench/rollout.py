"""Rollout throughput (issue 17): agent steps/s of the pipeline's rollout path against an in-process loop.

    python bench/rollout.py --model runs/quickstart/train/export --episodes 128 --workers 8 [--levels L1,L2] \
        [--env babyai] [--temperature 0] [--threads 2] [--rounds 2]

Both sides run the same held-out tasks with the same model, the one episode runner (agent/episode.py) and
the same engine settings, in the same run:
- pipeline: what `lam pipeline`, self-boosting and `lam eval` use: rollout actors of the one fleet
  (data_collection/fleet.py, eval/evaluator.py run_units), each asking the model served by `serving.server`
  (a subprocess, the embedded engine) over the OpenAI HTTP API, writing Parquet shards;
- in-process: `--workers` threads in this process, each running episodes with a policy that renders the
  prompt through the same chat-template code and submits it straight to an EmbeddedBackend in this process
  (its continuous batching batches the threads' forwards), writing the same rows.
The fleet and the server are warmed up (actors started, first requests served) before the timed rounds; the
in-process engine likewise; the two sides alternate round by round. Prints per round both rates and their ratio (pipeline / in-process), and how
many episodes took the same actions on both sides (greedy decoding: all of them, up to batching's float
noise). One JSON line at the end.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# the same OpenMP wait policy on both sides: the server gets PASSIVE from serving/launch.py, so does this
# process's engine (it must be set before torch starts its thread pool)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

SERVED = "lam-rollout-bench"

from agent.policies import ModelPolicy  # noqa: E402  (after the path insert above)


class EnginePolicy(ModelPolicy):
    """The model policy without HTTP: the server's chat route (serving/routes/chat.py) done in-process, with
    the sampling ModelPolicy asks for (its `sampling()`: greedy first try, warmer seeded retries)."""

    def __init__(self, backend, temperature: float, seed: int = 0) -> None:  # no HTTP client: not super().__init__
        self.backend, self.temperature, self.seed = backend, temperature, seed
        self.max_tokens, self.tool_max_tokens = 16, 512  # ModelPolicy's defaults

    def act(self, messages, env, step, attempt):
        from agent.policies import PolicyOutput, tool_call
        from envs.base import action_space_of
        from serving.backend_api import SamplingParams
        from serving.chat_format import parse_tool_calls, template_inputs

        space = action_space_of(env)
        tools = space.tools if space.kind == "tools" else None
        msgs, tpl_tools = template_inputs(messages, tools)
        ids = self.backend.encode(self.backend.render_chat(msgs, tools=tpl_tools))
        params = SamplingParams(**self.sampling(step, attempt, bool(tools)))
        text = self.backend.generate_sync(ids, params).choices[0].text
        if not tools:
            return text
        content, calls = parse_tool_calls(text)
        return PolicyOutput(content=content or "", tool_calls=[tool_call(c["function"]["name"], c["function"]["arguments"])
                                                                for c in calls])


def in_process(backend, env_name: str, tasks, runner, workers: int, temperature: float, out: Path) -> dict:
    from agent.episode import EpisodeRunner, episode_id
    from data_collection.schema import episode_rows
    from data_collection.store import TrajectoryStore
    from envs.registry import make_env

    lock, rows, queue = threading.Lock(), [], list(enumerate(tasks))

    def work() -> None:
        env, policy = make_env(env_name), EnginePolicy(backend, temperature)
        while True:
            with lock:
                if not queue:
                    return
                _, t = queue.pop(0)
            ep = EpisodeRunner(env, policy, t, runner, episode_id=episode_id(t, "inproc", 0)).run()
            got = episode_rows(ep, model=SERVED)
            with lock:
                rows.extend(got)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        for f in [ex.submit(work) for _ in range(workers)]:
            f.result()
    wall = time.perf_counter() - t0
    TrajectoryStore(out).write_shard("episodes", "chunk-00000", rows)
    return {"wall_s": wall, "steps": len(rows), "episodes": len({r.episode_id for r in rows})}


def pipeline(env_name: str, tasks, policy: dict, runner, workers: int, out: Path, fleet) -> dict:
    from data_collection.store import TrajectoryStore
    from eval.evaluator import run_units

    stats = run_units("pipeline", env_name, [(t, 0) for t in tasks], policy, runner, workers, out, chunk=4,
                      progress=False, pool=fleet)
    rows = TrajectoryStore(out).read_rows("episodes")
    return {"wall_s": stats["wall_s"], "steps": len(rows), "episodes": len({r.episode_id for r in rows})}


def actions_by_task(root: Path) -> dict:
    from data_collection.schema import group_steps
    from data_collection.store import TrajectoryStore

    return {(ep[0].level, ep[0].seed): [r.action for r in ep] for ep in group_steps(TrajectoryStore(root).read_rows("episodes"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a Hugging Face model dir (a `lam train` export)")
    p.add_argument("--env", default="babyai")
    p.add_argument("--levels", default="BabyAI-GoToLocal-v0")
    p.add_argument("--episodes", type=int, default=128)
    p.add_argument("--workers", type=int, default=8, help="rollout actors (pipeline) = threads (in-process)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the engine, both sides")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=64)
    p.add_argument("--history-window", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--base-seed", type=int, default=0)
    a = p.parse_args()
    if not (Path(a.model) / "config.json").exists():
        sys.exit(f"bench/rollout.py: --model {a.model} is not a Hugging Face model dir (no config.json)")

    import torch

    from agent.runner_config import RunnerConfig
    from envs.registry import sample_tasks
    from eval.evaluator import eval_fleet
    from serving.embedded import EmbeddedBackend
    from serving.launch import start_server_subprocess

    torch.set_num_threads(a.threads)
    runner = RunnerConfig(max_steps=a.max_steps, history_window=a.history_window)
    levels = a.levels.split(",")
    tasks = sample_tasks(a.env, levels, "test", a.episodes, base_seed=a.base_seed)
    warm = sample_tasks(a.env, levels, "train", max(2, a.workers), base_seed=a.base_seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    rounds = []
    server = start_server_subprocess(a.model, threads=a.threads, max_batch_size=a.max_batch_size, model_name=SERVED)
    policy = {"kind": "model", "base_url": server.base_url, "model": SERVED, "temperature": a.temperature}
    fleet, backend = eval_fleet(a.env, runner, policy, a.workers), None
    try:
        backend = EmbeddedBackend(a.model, max_batch_size=a.max_batch_size, num_threads=a.threads)
        pipeline(a.env, warm, policy, runner, a.workers, tmp / "warm-pipeline", fleet)  # actors up, server warm
        in_process(backend, a.env, warm, runner, a.workers, a.temperature, tmp / "warm-inproc")
        for k in range(a.rounds):  # interleaved: a noisy machine slows both sides alike
            pl = pipeline(a.env, tasks, policy, runner, a.workers, tmp / f"pipeline-{k}", fleet)
            ip = in_process(backend, a.env, tasks, runner, a.workers, a.temperature, tmp / f"inproc-{k}")
            rounds.append({"pipeline": pl, "in_process": ip})
    finally:
        fleet.close()
        server.stop()
        if backend is not None:
            backend.close()
    same_actions = []
    for k, r in enumerate(rounds):
        pa, ia = actions_by_task(tmp / f"pipeline-{k}"), actions_by_task(tmp / f"inproc-{k}")
        same = sum(pa.get(key) == acts for key, acts in ia.items())
        same_actions.append(f"{same}/{len(ia)}")
        pr, ir = (r[s]["steps"] / r[s]["wall_s"] for s in ("pipeline", "in_process"))
        r.update(pipeline_steps_per_s=round(pr, 1), in_process_steps_per_s=round(ir, 1), ratio=round(pr / ir, 3))
        print(f"round {k}: pipeline {pr:.1f} steps/s ({r['pipeline']['steps']} steps, {r['pipeline']['wall_s']:.1f} s), "
              f"in-process {ir:.1f} steps/s ({r['in_process']['steps']} steps, {r['in_process']['wall_s']:.1f} s): "
              f"ratio {pr / ir:.3f}; same actions in {same_actions[-1]} episodes", flush=True)
    ratios = sorted(r["ratio"] for r in rounds)
    print(json.dumps({"bench": "rollout", "model": a.model, "env": a.env, "levels": levels, "episodes": a.episodes,
                      "workers": a.workers, "threads": a.threads, "temperature": a.temperature,
                      "ratio_median": ratios[len(ratios) // 2], "rounds": rounds, "same_actions": same_actions,
                      "machine": f"{platform.machine()} {platform.system()}", "date": datetime.date.today().isoformat()}))


if __name__ == "__main__":
    main()
