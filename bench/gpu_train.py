"""Plain PyTorch vs DeepSpeed ZeRO-2 vs ZeRO-3 on one GPU: tokens/s and MFU, same model/data/batch.

    bash bench/gpu_train.sh                       # on a single-GPU machine (installs carried wheels)
    python bench/gpu_train.py --preset 0.4b --seq 2048 --micro-batch 8 --steps 20
    python bench/gpu_train.py --preset tiny --seq 128 --micro-batch 2 --steps 3 --cpu   # smoke test

MFU = 6·N·tokens/s (+ attention 12·L·d·seq per token) / peak bf16 FLOP/s, where the peak is measured
in the same run with a large bf16 matmul (the reference figures quote it the same way).
Tuning, not changing the work: same model, batch, sequence and optimizer in all three; ZeRO settings
for one GPU keep parameters resident (persistence threshold), use large buckets, no overlap thread.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measured_peak_flops(device, dtype) -> float:
    import torch

    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def zero_config(stage: int, micro: int) -> dict:
    big = 500_000_000
    zero = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True,
            "reduce_bucket_size": big, "allgather_bucket_size": big}
    if stage == 3:
        # one GPU: nothing to gather from peers, so keep every parameter resident and prefetch widely
        zero.update(stage3_param_persistence_threshold=10**10, stage3_max_live_parameters=10**10,
                    stage3_prefetch_bucket_size=big, stage3_max_reuse_distance=10**10)
    return {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
            "bf16": {"enabled": True}, "zero_optimization": zero, "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="0.4b")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--modes", default="plain,zero2,zero3")
    p.add_argument("--cpu", action="store_true", help="smoke-test the script on CPU (fp32)")
    a = p.parse_args()

    from training.train import _setup_dist

    _setup_dist()
    import deepspeed
    import torch

    from training.model import build_model

    device = torch.device("cpu" if a.cpu or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = measured_peak_flops(device, dtype)
    vocab = 32000
    data = torch.randint(0, vocab, (a.steps + a.warmup, a.micro_batch, a.seq))
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "peak_flops_measured": peak, "preset": a.preset, "seq": a.seq, "micro_batch": a.micro_batch}
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    for mode in a.modes.split(","):
        torch.manual_seed(0)
        model = build_model(a.preset, vocab, max_positions=a.seq)
        model.config._attn_implementation = "sdpa"
        n_params = sum(p.numel() for p in model.parameters())
        cfg = model.config
        flops_per_token = 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * a.seq
        fused = {"fused": True} if device.type == "cuda" else {}
        if mode == "plain":
            model.to(device=device, dtype=dtype)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)

            def step(batch):
                loss = model(input_ids=batch, labels=batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)
            ds = zero_config(int(mode[-1]), a.micro_batch)
            ds["bf16"]["enabled"] = device.type == "cuda"
            engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)

            def step(batch, engine=engine):
                loss = engine(input_ids=batch, labels=batch).loss
                engine.backward(loss)
                engine.step()
        for i in range(a.warmup):
            step(data[i].to(device))
        sync(device)
        t0 = time.perf_counter()
        for i in range(a.warmup, a.warmup + a.steps):
            step(data[i].to(device))
        sync(device)
        tps = a.steps * a.micro_batch * a.seq / (time.perf_counter() - t0)
        results[mode] = {"tokens_per_s": tps, "mfu": flops_per_token * tps / peak, "params": n_params}
        print(mode, json.dumps(results[mode]), flush=True)
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for mode in ("zero2", "zero3"):
        if mode in results and "plain" in results:
            results[f"{mode}_over_plain"] = results[mode]["tokens_per_s"] / results["plain"]["tokens_per_s"]
    print(json.dumps(results, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_train.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
