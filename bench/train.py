"""DeepSpeed engine vs a plain PyTorch loop: same model, data, batches, optimizer; same run.

    python bench/train.py --data runs/quickstart/data [--zero-stage 0] [--steps 30] [--threads 2]

Prints tokens/s of each and the ratio engine/plain (target ≥ 0.9× on CPU). The two loops are
interleaved in rounds so machine noise hits both alike.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--zero-stage", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per round and loop")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens-per-batch", type=int, default=4096)
    a = p.parse_args()

    from training.train import _setup_dist

    _setup_dist()
    import deepspeed
    import torch

    from data_collection.schema import group_steps
    from data_collection.store import TrajectoryStore
    from training.model import ActionLoss, build_model
    from training.samples import build_samples, collate, episode_conversations, make_batches, tokenizer_texts
    from training.tokenizer import ChatEncoder, train_tokenizer
    from training.zero_config import deepspeed_config

    torch.set_num_threads(a.threads)
    eps = group_steps(TrajectoryStore(Path(a.data)).read_rows("train"))[:3000]
    convs = episode_conversations(eps)
    tok = train_tokenizer(tokenizer_texts(convs), vocab_size=2048)
    samples = build_samples(convs, ChatEncoder(tok), 1024)
    batches = [collate(samples, b, tok.pad_token_id) for b in make_batches(samples, a.tokens_per_batch, 0, 0)]

    base = ActionLoss(build_model("tiny", len(tok), seed=0))
    plain = copy.deepcopy(base)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3, betas=(0.9, 0.95))
    ds_model = copy.deepcopy(base)
    ds_opt = torch.optim.AdamW(ds_model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = deepspeed_config(a.zero_stage, 16, 1, 1.0, False)
    engine, *_ = deepspeed.initialize(model=ds_model, optimizer=ds_opt, config=cfg)

    def run_plain(bs):
        for b in bs:
            loss, _ = plain(**b)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
            plain_opt.step()
            plain_opt.zero_grad(set_to_none=True)

    def run_engine(bs):
        for b in bs:
            loss, _ = engine(**b)
            engine.backward(loss)
            engine.step()

    times = {"plain": 0.0, "deepspeed": 0.0}
    tokens = 0
    run_plain(batches[:2]), run_engine(batches[:2])  # warm-up
    for r in range(a.rounds):
        chunk = batches[(r * a.steps) % len(batches):][: a.steps]
        tokens += sum(int(b["attention_mask"].sum()) for b in chunk)
        for name, fn in (("plain", run_plain), ("deepspeed", run_engine)) if r % 2 == 0 else (("deepspeed", run_engine), ("plain", run_plain)):
            t0 = time.perf_counter()
            fn(chunk)
            times[name] += time.perf_counter() - t0
    result = {
        "zero_stage": a.zero_stage,
        "threads": a.threads,
        "plain_tokens_per_s": tokens / times["plain"],
        "deepspeed_tokens_per_s": tokens / times["deepspeed"],
        "ratio_deepspeed_over_plain": times["plain"] / times["deepspeed"],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
