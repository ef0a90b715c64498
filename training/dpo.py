"""Preference learning (DPO, Rafailov et al. 2023) on success/failure pairs of the same task.

    lam dpo --data runs/recipe/boost/data --model runs/recipe/train/export --out runs/dpo [--resume] [key=value ...]

A pair is one environment-verified success and one failure of the model on the same task (level,
seed). An episode's log-probability is the sum over its action tokens across its history windows,
rendered exactly as in SFT. The reference is a frozen copy of the starting model.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from data_collection.schema import StepRow


class DPOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beta: float = 0.1
    lr: float = 2e-5
    epochs: float = 1.0
    pairs_per_step: int = 4
    history_window: int = 8
    max_seq_len: int = 1024
    max_pairs: int = 2000
    # add the SFT loss on the chosen episode (weight); keeps the policy from drifting off-format
    sft_weight: float = 0.1
    zero_stage: int = 0
    threads: int | None = None
    seed: int = 0
    # optimizer steps between checkpoints (OUT/checkpoints, for --resume); 0 = only at the end
    checkpoint_every: int = 50
    # scalars to OUT/tb as well as OUT/metrics.jsonl: tensorboard --logdir OUT/tb
    tensorboard: bool = True
    # an outcome verifier (lam train-verifier OUT/best) as reward model: pairs by its score, not the stored
    # verdict, for episodes no environment judged (training/dpo_verifier.py); null = the verdicts
    verifier: str | None = None
    # with a verifier: a rejected episode scores at least this much below the chosen one
    verifier_margin: float = 0.5


def make_pairs(rows: list[StepRow], max_pairs: int, seed: int) -> list[tuple[list[StepRow], list[StepRow]]]:
    from data_collection.schema import group_steps

    by_task: dict[str, dict[bool, list]] = {}
    for ep in group_steps(rows):
        by_task.setdefault(ep[0].task_id, {True: [], False: []})[bool(ep[-1].episode_success)].append(ep)
    rng = random.Random(seed)
    pairs = []
    for tid in sorted(by_task):
        good, bad = by_task[tid][True], by_task[tid][False]
        for g, b in zip(good, bad):
            pairs.append((g, b))
    rng.shuffle(pairs)
    return pairs[:max_pairs]


def _episode_samples(ep: list[StepRow], encoder, action_names, window: int, max_len: int):
    from training.samples import build_samples, episode_conversations

    return build_samples(episode_conversations([ep]), encoder, max_len)


def action_logps(model, samples, pad_id: int, device):
    """The log-prob of every action token of one episode (all its windows, in order), 1-D: what DPO sums
    and the RL phase (training/rl.py) weighs token by token. `model`: an ActionLoss (`.lm` the causal LM)."""
    import torch

    from training.samples import collate

    batch = {k: v.to(device) for k, v in collate(samples, list(range(len(samples))), pad_id).items()}
    hidden = model.lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    target = batch["labels"][:, 1:]
    keep = target != -100
    logits = model.lm.lm_head(hidden[:, :-1][keep]).float()
    return torch.log_softmax(logits, -1).gather(1, target[keep].unsqueeze(1)).squeeze(1)


def _seq_logp(model, samples, pad_id: int, device):
    """Sum of action-token log-probs over all windows of one episode, and their count."""
    lp = action_logps(model, samples, pad_id, device)
    return lp.sum(), int(lp.numel())


def begin_run(out_dir: str, resume: bool, overwrite: bool, tensorboard: bool, threads: int | None, seed: int) -> None:
    """What a training phase does before its first tensor (DPO, RL): OUT prepared (resumed, overwritten or
    refused), TensorBoard and the process group checked, DeepSpeed's op note, torch threads and seed."""
    from training.metrics import check_tensorboard
    from training.run_dir import prepare_out_dir
    from training.train import _setup_dist, note_op_build

    prepare_out_dir(out_dir, resume, overwrite)
    check_tensorboard(tensorboard)
    _setup_dist()
    note_op_build()
    import torch

    torch.set_num_threads(threads or 2)
    torch.manual_seed(seed)


def frozen_copy(policy):
    """The reference model: a copy of the starting policy that never trains."""
    import copy

    reference = copy.deepcopy(policy).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


def optimizer_engine(policy, lr: float, zero_stage: int, micro_batch: int):
    """AdamW wrapped in a DeepSpeed engine (gloo on CPU, NCCL on GPUs), as DPO and the RL phase train."""
    import deepspeed
    import torch

    from training.zero_config import deepspeed_config

    opt = torch.optim.AdamW(policy.parameters(), lr=lr, betas=(0.9, 0.95))
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")
    engine, *_ = deepspeed.initialize(model=policy, optimizer=opt,
                                      config=deepspeed_config(zero_stage, micro_batch, 1, 1.0, False))
    return engine


class NoPairsError(ValueError):
    """The data holds no task with both a verified success and a failure: DPO has nothing to learn from."""


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The pair order of one epoch, a function of (seed, epoch) alone, so a resumed run sees the same order."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def _check_inputs(data_dirs: list[str], model_dir: str) -> None:
    if not (Path(model_dir) / "config.json").exists():
        raise FileNotFoundError(f"--model {model_dir} is not a Hugging Face model directory (no config.json); "
                                f"pass a `lam train` export, e.g. runs/train/export")
    for d in data_dirs:
        if not (Path(d) / "manifest.json").exists():
            raise FileNotFoundError(f"--data {d} is not a lam dataset (no manifest.json); pass a dir with "
                                    f"train/ and failures/, e.g. a pipeline run's boost/data")


def train_dpo(data_dirs: list[str], model_dir: str, out_dir: str, cfg: DPOConfig, progress: bool = True,
              resume: bool = False, overwrite: bool = True) -> dict:
    """DPO into OUT. resume: continue from OUT/checkpoints/latest; otherwise a previous run in OUT is deleted
    (overwrite=True, the pipeline's way) or refused with RunExistsError (`lam dpo` without --overwrite)."""
    _check_inputs(data_dirs, model_dir)
    begin_run(out_dir, resume, overwrite, cfg.tensorboard, cfg.threads, cfg.seed)
    import torch
    from rich.progress import Progress

    from data_collection.store import TrajectoryStore
    from envs.registry import get_env_spec
    from training.export import export_hf
    from training.metrics import MultiLogger
    from training.model import ActionLoss, build_model
    from serving.value_marks import read_settings
    from training.tokenizer import ChatEncoder, load_tokenizer

    out = Path(out_dir)
    t0 = time.perf_counter()
    rows: list[StepRow] = []
    for d in data_dirs:
        store = TrajectoryStore(Path(d))
        for subset in ("train", "failures"):
            if store.shard_paths(subset):
                rows += store.read_rows(subset)
    if cfg.verifier:
        from training.dpo_verifier import verifier_pairs

        pairs = verifier_pairs(rows, cfg.verifier, cfg.max_pairs, cfg.seed, cfg.verifier_margin)
    else:
        pairs = make_pairs(rows, cfg.max_pairs, cfg.seed)
    if not pairs:
        raise NoPairsError(f"no success/failure pairs on the same task in {data_dirs}: sample more trials per task")
    out.mkdir(parents=True, exist_ok=True)
    (out / "dpo_config.json").write_text(cfg.model_dump_json(indent=1))
    tok = load_tokenizer(model_dir)
    marks = read_settings(model_dir).get("value_marks", False)  # the base model's view, kept
    enc = ChatEncoder(tok, value_marks=marks)
    names = get_env_spec(rows[0].env).factory().action_names()
    encoded = [(_episode_samples(g, enc, names, cfg.history_window, cfg.max_seq_len),
                _episode_samples(b, enc, names, cfg.history_window, cfg.max_seq_len)) for g, b in pairs]

    policy = ActionLoss(build_model(model_dir, len(tok)))
    reference = frozen_copy(policy)
    engine = optimizer_engine(policy, cfg.lr, cfg.zero_stage, cfg.pairs_per_step)
    device = engine.device
    reference.to(device)
    with torch.no_grad():
        ref = [(float(_seq_logp(reference, g, tok.pad_token_id, device)[0]),
                float(_seq_logp(reference, b, tok.pad_token_id, device)[0])) for g, b in encoded]

    ckpt = out / "checkpoints"
    step, epoch, pos, accs, last = 0, 0, 0, [], float("nan")
    if resume and (ckpt / "latest").exists():
        _, state = engine.load_checkpoint(str(ckpt))
        step, epoch, pos, accs, last = state["step"], state["epoch"], state["pos"], state["accs"], state["last"]
    logger = MultiLogger(out, cfg.tensorboard, resume_step=step if resume else None)
    steps = max(1, int(len(encoded) * cfg.epochs) // cfg.pairs_per_step)
    per_epoch = max(1, len(encoded) // cfg.pairs_per_step)  # fewer pairs than pairs_per_step: one short step

    def save() -> None:
        engine.save_checkpoint(str(ckpt), tag=f"step{step}",
                               client_state={"step": step, "epoch": epoch, "pos": pos, "accs": accs[-50:], "last": last})

    with Progress(disable=not progress) as bar:
        job = bar.add_task("dpo", total=steps, completed=step)
        while step < steps:
            order = _epoch_order(len(encoded), cfg.seed, epoch)
            while pos < per_epoch and step < steps:
                chosen = order[pos * cfg.pairs_per_step : (pos + 1) * cfg.pairs_per_step]
                loss = 0.0
                for i in chosen:
                    g, b = encoded[i]
                    lg, ng = _seq_logp(engine.module, g, tok.pad_token_id, device)
                    lb, _ = _seq_logp(engine.module, b, tok.pad_token_id, device)
                    margin = cfg.beta * ((lg - ref[i][0]) - (lb - ref[i][1]))
                    loss = loss - torch.nn.functional.logsigmoid(margin) - cfg.sft_weight * lg / max(ng, 1)
                    accs.append(float(margin > 0))
                loss = loss / len(chosen)
                engine.backward(loss)
                engine.step()
                step, pos = step + 1, pos + 1
                last = float(loss.detach())
                logger.log(step, {"dpo_loss": last, "reward_accuracy": sum(accs[-50:]) / len(accs[-50:])})
                bar.update(job, completed=step)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    save()
            if pos >= per_epoch:
                epoch, pos = epoch + 1, 0
    save()
    export = out / "export"
    export_hf(engine, policy.lm, tok, export, zero_stage=cfg.zero_stage, value_marks=marks)
    logger.close()
    summary = {"pairs": len(pairs), "steps": step, "final_loss": last,
               "reward_accuracy": sum(accs[-50:]) / max(1, len(accs[-50:])), "wall_s": time.perf_counter() - t0,
               "export": str(export)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary

