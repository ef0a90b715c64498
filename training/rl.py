"""Online RL (GRPO-style) on the model's own rollouts, the environment's verdict as reward:

    lam rl --model runs/train/export --out runs/rl [--resume | --overwrite] [--model-url URL] [key=value ...]
    lam rl --model runs/train/export --out runs/rl --config configs/recipe.yaml iterations=5 tasks_per_iter=8

Each iteration: `tasks_per_iter` fresh train-split tasks, `group_size` episodes of each by the current
weights at `temperature`, through the project's one rollout path (data_collection/attempts.py over the
Ray fleet, the episode runner, a `model` policy on the served endpoint; the episodes are kept in
OUT/rollouts/iter-NNNN as a dataset); group-relative advantages (training/grpo.py); one or more optimizer
steps on the episodes of informative groups, over exactly the action tokens SFT and DPO train
(training/samples.py), with the PPO clip against the rollout weights and a k3 KL to the frozen starting
model; the new weights exported to OUT/weights and pushed to the running server (POST /v1/weights, no
restart; /v1/models must report the new version before the next rollouts); a DeepSpeed checkpoint
(model, optimizer, iteration, metrics so far) in OUT/checkpoints. A run killed at any point resumes with
--resume from the last finished iteration (its tasks and sampling seeds are functions of the iteration) and
ends with the same number of iterations; OUT/metrics.jsonl holds one record per finished iteration.
"""
from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class RLConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # the environment and the levels whose train-split tasks the model attempts (the pipeline: collect's)
    env: str = "babyai"
    levels: list[str] = ["BabyAI-GoToLocal-v0"]
    iterations: int = Field(10, gt=0)
    # fresh tasks per iteration, and episodes per task (the group whose mean reward is the baseline)
    tasks_per_iter: int = Field(16, gt=0)
    group_size: int = Field(4, ge=2)
    temperature: float = Field(1.0, gt=0.0)
    # iteration k's tasks are train-split seeds base_seed + k * tasks_per_iter ...: none the expert
    # collection (0...) or self-boosting (50,000,000...) used
    base_seed: int = 60_000_000
    # the episode runner's limits during rollouts (the pipeline: eval's and train's)
    max_steps: int = Field(64, gt=0)
    max_retries: int = Field(2, ge=0)
    history_window: int = 8
    time_limit_s: float | None = 120.0
    workers: int = Field(16, gt=0)  # rollout actors sharing the server
    # reward = verdict (1 solved, 0 not) - invalid_penalty * invalid outputs (retries + invalid steps)
    invalid_penalty: float = Field(0.0, ge=0.0)
    lr: float = 5e-5
    kl_coef: float = Field(0.05, ge=0.0)  # weight of KL(policy || starting model), k3 estimate per action token
    clip_eps: float = Field(0.2, ge=0.0)  # PPO clip of pi/pi_rollout; 0: plain policy gradient
    epochs_per_iter: int = Field(1, gt=0)  # passes over an iteration's informative episodes
    episodes_per_step: int = Field(8, gt=0)  # episodes per optimizer step
    max_seq_len: int = 1024
    zero_stage: int = 0
    threads: int | None = None
    seed: int = 0
    # scalars to OUT/tb as well as OUT/metrics.jsonl: tensorboard --logdir OUT/tb
    tensorboard: bool = True


def check_inputs(model_dir: str, cfg: RLConfig) -> None:
    from envs.registry import get_env_spec

    if not (Path(model_dir) / "config.json").exists():
        raise FileNotFoundError(f"--model {model_dir} is not a Hugging Face model directory (no config.json); "
                                "pass a `lam train` export, e.g. runs/train/export")
    get_env_spec(cfg.env).check_levels(cfg.levels)


def _runner(cfg: RLConfig) -> dict:
    from agent.runner_config import RunnerConfig, wire

    return wire(RunnerConfig(max_steps=cfg.max_steps, max_retries=cfg.max_retries, history_window=cfg.history_window,
                             time_limit_s=cfg.time_limit_s))


def rollouts(out: Path, cfg: RLConfig, it: int, srv) -> list:
    """Iteration `it`'s episodes (lists of StepRows), every one of every group, identical ones too."""
    from agent.policy_factory import model_spec
    from data_collection.attempts import collect_attempts
    from data_collection.schema import group_steps, table_rows
    from envs.registry import sample_tasks

    tasks = sample_tasks(cfg.env, cfg.levels, "train", cfg.tasks_per_iter,
                         base_seed=cfg.base_seed + (it - 1) * cfg.tasks_per_iter)
    where = out / "rollouts" / f"iter-{it:04d}"
    shutil.rmtree(where, ignore_errors=True)  # a killed iteration's half: its episodes came from these weights too,
    rows = []                                 # but the groups must be whole, so they are sampled again
    # chunks small enough that every actor has two (a batch never spans two trials): the server sees
    # `workers` episodes at once, not one per trial
    batch = max(1, -(-cfg.tasks_per_iter * cfg.group_size // (2 * cfg.workers)))
    collect_attempts(where, cfg.env, tasks, cfg.group_size,
                     lambda t: model_spec(srv.base_url, srv.model, cfg.temperature, cfg.seed + 1000 * it + t),
                     _runner(cfg), cfg.workers, batch=batch,
                     on_batch=lambda chunk, result: rows.extend(table_rows(result["table"])))
    return group_steps(rows)


def update(engine, reference, episodes: list, advantages: list[float], enc, pad_id: int, cfg: RLConfig,
           it: int) -> dict:
    """The iteration's optimizer steps on the episodes with a non-zero advantage; their loss, KL and clip share."""
    import torch

    from training.dpo import action_logps
    from training.grpo import episode_loss
    from training.samples import build_samples, episode_conversations

    items = []
    for ep, a in zip(episodes, advantages):
        samples = build_samples(episode_conversations([ep]), enc, cfg.max_seq_len) if a != 0 else []
        if samples:
            items.append((samples, a))
    if not items:
        return {"steps": 0, "episodes_trained": 0, "loss": None, "kl": None, "clip_frac": None}
    device, model = engine.device, engine.module
    orders = [list(range(len(items))) for _ in range(cfg.epochs_per_iter)]
    for epoch, order in enumerate(orders):
        random.Random(f"{cfg.seed}/{it}/{epoch}").shuffle(order)
    first = set(orders[0][: cfg.episodes_per_step])  # trained before any step: their own forward gives `old`
    with torch.no_grad():  # the rollout weights (the engine's, before this iteration's first step) and the reference
        old = [None if i in first else action_logps(model, s, pad_id, device) for i, (s, _) in enumerate(items)]
        ref = [action_logps(reference, s, pad_id, device) for s, _ in items]
    steps, losses, kls, clips = 0, [], [], []
    for order in orders:
        for k in range(0, len(order), cfg.episodes_per_step):
            chunk = order[k : k + cfg.episodes_per_step]
            loss = 0.0
            for i in chunk:
                lp = action_logps(model, items[i][0], pad_id, device)
                old[i] = lp.detach() if old[i] is None else old[i]
                l_i, kl, clip = episode_loss(lp, old[i], ref[i], items[i][1], cfg.clip_eps, cfg.kl_coef)
                loss = loss + l_i / len(chunk)
                kls.append(float(kl))
                clips.append(float(clip))
            engine.backward(loss)
            engine.step()
            steps += 1
            losses.append(float(loss.detach()))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"steps": steps, "episodes_trained": len(items), "loss": mean(losses), "kl": mean(kls),
            "clip_frac": mean(clips)}


def _line(r: dict) -> str:
    lo, hi = r["success_ci95"]
    return (f"rl iter {r['iteration']}: success {100 * r['success_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
            f"of {r['episodes']}, reward {r['mean_reward']:.3f}, informative groups {r['informative_groups']}/"
            f"{r['groups']}, loss {r['loss'] if r['loss'] is None else round(r['loss'], 4)}, kl "
            f"{r['kl'] if r['kl'] is None else round(r['kl'], 5)}, weights v{r['weights_version']} "
            f"(rollouts {r['rollout_s']:.0f}s, update {r['update_s']:.0f}s, push {r['push_s']:.1f}s)")


def train_rl(model_dir: str, out_dir: str, cfg: RLConfig, model_url: str | None = None, resume: bool = False,
             overwrite: bool = True, server: dict | None = None, log=None) -> dict:
    """RL into OUT (OUT/export at the end). model_url: roll out against that server (its weights are replaced);
    None: start the embedded server on model_dir (`server`: start_server_subprocess keywords) and stop it at
    the end. resume: continue from OUT/checkpoints; otherwise a previous run in OUT is deleted (overwrite,
    the pipeline's way) or refused (RunExistsError)."""
    from training.dpo import begin_run

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    check_inputs(model_dir, cfg)
    begin_run(out_dir, resume, overwrite, cfg.tensorboard, cfg.threads, cfg.seed)
    import torch

    from eval.metrics import wilson
    from training.dpo import frozen_copy, optimizer_engine
    from training.export import export_hf
    from training.grpo import episode_reward, group_advantages
    from training.metrics import MultiLogger
    from training.model import ActionLoss, build_model
    from training.rl_server import served_policy
    from serving.value_marks import read_settings
    from training.tokenizer import ChatEncoder, load_tokenizer

    out, t_start = Path(out_dir), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "rl_config.json").write_text(cfg.model_dump_json(indent=1))
    tok = load_tokenizer(model_dir)
    marks = read_settings(model_dir).get("value_marks", False)  # the base model's view, kept
    enc = ChatEncoder(tok, value_marks=marks)
    policy = ActionLoss(build_model(model_dir, len(tok)))
    reference = frozen_copy(policy)  # the model the phase started from: its KL anchor
    engine = optimizer_engine(policy, cfg.lr, cfg.zero_stage, cfg.episodes_per_step)
    reference.to(engine.device)
    ckpt, weights = out / "checkpoints", out / "weights"
    it, history = 0, []
    if resume and (ckpt / "latest").exists():
        _, state = engine.load_checkpoint(str(ckpt))
        it, history = state["iteration"], state["history"]
        torch.set_rng_state(state["torch_rng"])
        log(f"rl: resuming after iteration {it} of {cfg.iterations} ({ckpt})")
    logger = MultiLogger(out, cfg.tensorboard, resume_step=it if resume else None)

    with served_policy(model_dir, model_url, server, log) as srv:
        # the first rollouts sample the checkpoint's weights (resumed) or --model's; the server may hold others
        # (the start, a killed iteration's, another run's pushes): serve ours first
        if it > 0 or not srv.serves(model_dir):
            export_hf(engine, policy.lm, tok, weights, zero_stage=cfg.zero_stage, value_marks=marks)
            srv.push(str(weights), f"rl-iter-{it}")
        while it < cfg.iterations:
            it += 1
            t0 = time.perf_counter()
            episodes = rollouts(out, cfg, it, srv)
            t1 = time.perf_counter()
            rewards = [episode_reward(ep, cfg.invalid_penalty) for ep in episodes]
            adv, informative, groups = group_advantages(rewards, [ep[0].task_id for ep in episodes])
            stats = update(engine, reference, episodes, adv, enc, tok.pad_token_id, cfg, it)
            t2 = time.perf_counter()
            export_hf(engine, policy.lm, tok, weights, zero_stage=cfg.zero_stage, value_marks=marks)
            card = srv.push(str(weights), f"rl-iter-{it}")
            wins = sum(bool(ep[-1].episode_success) for ep in episodes)
            record = {"iteration": it, "episodes": len(episodes), "successes": wins,
                      "success_rate": wins / max(1, len(episodes)), "success_ci95": list(wilson(wins, len(episodes))),
                      "mean_reward": sum(rewards) / max(1, len(rewards)), "informative_groups": informative,
                      "groups": groups, "informative_share": informative / max(1, groups), **stats,
                      "weights_version": card["version"], "weights_label": card["label"],
                      "rollout_s": t1 - t0, "update_s": t2 - t1, "push_s": time.perf_counter() - t2}
            history.append(record)
            logger.log(it, {k: v for k, v in record.items() if k != "iteration"})
            engine.save_checkpoint(str(ckpt), tag=f"iter{it}", client_state={
                "iteration": it, "history": history, "torch_rng": torch.get_rng_state(),
                "next_task_seed": cfg.base_seed + it * cfg.tasks_per_iter})
            for old in ckpt.glob("iter*"):  # one checkpoint is all a resume needs
                if old.name != f"iter{it}":
                    shutil.rmtree(old, ignore_errors=True)
            log(_line(record))
    export = out / "export"
    export_hf(engine, policy.lm, tok, export, zero_stage=cfg.zero_stage, value_marks=marks)
    logger.close()
    first, last = history[0], history[-1]
    summary = {"iterations": it, "export": str(export), "wall_s": time.perf_counter() - t_start,
               "first_success_rate": first["success_rate"], "last_success_rate": last["success_rate"],
               "rollout_s": sum(r["rollout_s"] for r in history), "update_s": sum(r["update_s"] for r in history),
               "mean_informative_share": sum(r["informative_share"] for r in history) / len(history),
               "final_kl": last["kl"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
