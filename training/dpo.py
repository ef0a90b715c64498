"""Preference learning (DPO, Rafailov et al. 2023) on success/failure pairs of the same task.

    python -m training.dpo --data runs/recipe/boost --model runs/recipe/train/export --out runs/recipe/dpo

A pair is one environment-verified success and one failure of the model on the same task (level,
seed). An episode's log-probability is the sum over its action tokens across its history windows,
rendered exactly as in SFT. The reference is a frozen copy of the starting model.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict


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


def make_pairs(records: list[dict], max_pairs: int, seed: int) -> list[tuple[list[dict], list[dict]]]:
    from data_collection.store import group_episodes

    by_task: dict[str, dict[bool, list]] = {}
    for ep in group_episodes(records):
        by_task.setdefault(ep[0]["task_id"], {True: [], False: []})[bool(ep[-1]["episode_success"])].append(ep)
    rng = random.Random(seed)
    pairs = []
    for tid in sorted(by_task):
        good, bad = by_task[tid][True], by_task[tid][False]
        for g, b in zip(good, bad):
            pairs.append((g, b))
    rng.shuffle(pairs)
    return pairs[:max_pairs]


def _episode_samples(ep: list[dict], encoder, action_names, window: int, max_len: int):
    from training.samples import build_samples, episode_conversations

    return build_samples(episode_conversations([ep]), encoder, max_len)


def _seq_logp(model, samples, pad_id: int, device):
    """Sum of action-token log-probs over all windows of one episode."""
    import torch

    from training.samples import collate

    batch = {k: v.to(device) for k, v in collate(samples, list(range(len(samples))), pad_id).items()}
    hidden = model.lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    target = batch["labels"][:, 1:]
    keep = target != -100
    logits = model.lm.lm_head(hidden[:, :-1][keep]).float()
    return torch.log_softmax(logits, -1).gather(1, target[keep].unsqueeze(1)).sum(), int(keep.sum())


class NoPairsError(ValueError):
    """The data holds no task with both a verified success and a failure: DPO has nothing to learn from."""


def train_dpo(data_dirs: list[str], model_dir: str, out_dir: str, cfg: DPOConfig, progress: bool = True) -> dict:
    from training.train import _setup_dist

    _setup_dist()
    import copy

    import deepspeed
    import torch
    from rich.progress import Progress

    from data_collection.store import TrajectoryStore
    from envs.registry import get_env_spec
    from training.export import export_hf
    from training.metrics import MultiLogger
    from training.model import ActionLoss, build_model
    from training.tokenizer import ChatEncoder, load_tokenizer
    from training.zero_config import deepspeed_config

    torch.set_num_threads(cfg.threads or 2)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records = []
    for d in data_dirs:
        store = TrajectoryStore(Path(d))
        for subset in ("train", "failures"):
            if store.shard_paths(subset):
                records += store.read_records(subset)
    pairs = make_pairs(records, cfg.max_pairs, cfg.seed)
    if not pairs:
        raise NoPairsError(f"no success/failure pairs on the same task in {data_dirs}: sample more trials per task")
    tok = load_tokenizer(model_dir)
    enc = ChatEncoder(tok)
    names = get_env_spec(records[0]["env"]).factory().action_names()
    encoded = [(_episode_samples(g, enc, names, cfg.history_window, cfg.max_seq_len),
                _episode_samples(b, enc, names, cfg.history_window, cfg.max_seq_len)) for g, b in pairs]

    policy = ActionLoss(build_model(model_dir, len(tok)))
    reference = copy.deepcopy(policy).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.95))
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")
    engine, *_ = deepspeed.initialize(model=policy, optimizer=opt,
                                      config=deepspeed_config(cfg.zero_stage, cfg.pairs_per_step, 1, 1.0, False))
    device = engine.device
    reference.to(device)
    with torch.no_grad():
        ref = [(float(_seq_logp(reference, g, tok.pad_token_id, device)[0]),
                float(_seq_logp(reference, b, tok.pad_token_id, device)[0])) for g, b in encoded]

    logger = MultiLogger(out)
    steps = max(1, int(len(encoded) * cfg.epochs) // cfg.pairs_per_step)
    order = list(range(len(encoded)))
    rng = random.Random(cfg.seed)
    step, accs, last = 0, [], float("nan")
    with Progress(disable=not progress) as bar:
        job = bar.add_task("dpo", total=steps)
        while step < steps:
            rng.shuffle(order)
            for start in range(0, len(order) - cfg.pairs_per_step + 1, cfg.pairs_per_step):
                loss = 0.0
                for i in order[start : start + cfg.pairs_per_step]:
                    g, b = encoded[i]
                    lg, ng = _seq_logp(engine.module, g, tok.pad_token_id, device)
                    lb, _ = _seq_logp(engine.module, b, tok.pad_token_id, device)
                    margin = cfg.beta * ((lg - ref[i][0]) - (lb - ref[i][1]))
                    loss = loss - torch.nn.functional.logsigmoid(margin) - cfg.sft_weight * lg / max(ng, 1)
                    accs.append(float(margin > 0))
                loss = loss / cfg.pairs_per_step
                engine.backward(loss)
                engine.step()
                step += 1
                last = float(loss.detach())
                logger.log(step, {"dpo_loss": last, "reward_accuracy": sum(accs[-50:]) / len(accs[-50:])})
                bar.update(job, advance=1)
                if step >= steps:
                    break
    export = out / "export"
    export_hf(engine, policy.lm, tok, export, zero_stage=cfg.zero_stage)
    logger.close()
    summary = {"pairs": len(pairs), "steps": step, "final_loss": last,
               "reward_accuracy": sum(accs[-50:]) / max(1, len(accs[-50:])), "wall_s": time.perf_counter() - t0,
               "export": str(export)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="DPO on success/failure pairs")
    p.add_argument("--data", required=True, help="comma-separated dataset dirs holding train/ and failures/")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    import yaml

    raw = {k: yaml.safe_load(v) for k, _, v in (kv.partition("=") for kv in a.overrides)}
    print(json.dumps(train_dpo(a.data.split(","), a.model, a.out, DPOConfig(**raw)), indent=1))


if __name__ == "__main__":
    main()
