"""Decode step time with and without skipping the batch's left padding, same backend, same rows, alternated.

    python bench/decode_attention.py                       # 25M random model, bf16, 24 rows of 40-600 tokens
    python bench/decode_attention.py --rows 32 --min-len 100 --max-len 300 --windows 8 --out /tmp/da.json
    python bench/decode_attention.py --rows 1 --threads 2 --min-len 60 --max-len 120 --seconds 0.5   # serial path

One EmbeddedBackend (`--threads` torch threads, no prefill thread, no prefix cache) decodes `--rows`
requests whose prompts have random lengths in [--min-len, --max-len) (random tokens; a random model never stops early).
Windows of `--seconds` alternate between decode attention that skips each run of rows' left padding
(serving/decode_attention.py) and transformers' plain sdpa over the whole batch, as before it (the attention
implementation and `skip_padding` are read at every step), so both see the same rows, contexts and machine
load. `--rows 1 --threads 2` checks the one-request-at-a-time path, which has no padding to skip. Reports
ms per decode step for each, the padding share of the KV, and the ratio.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small", help="size preset of the random model (training/model.py)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--rows", type=int, default=24, help="1: the one-request-at-a-time server's decode path")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--min-len", type=int, default=40)
    p.add_argument("--max-len", type=int, default=600)
    p.add_argument("--windows", type=int, default=5, help="windows per mode, alternated")
    p.add_argument("--seconds", type=float, default=1.0, help="length of a measured window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON summary here")
    a = p.parse_args()
    if not 1 <= a.min_len < a.max_len:
        raise SystemExit("Error: need 1 <= --min-len < --max-len")
    from serve import build_babyai_random_model, emit

    from serving.decode_attention import ATTN_NAME
    from serving.embedded import EmbeddedBackend, SamplingParams

    with tempfile.TemporaryDirectory(prefix="lam-bench-da-") as tmp:
        # Built in a child process: torch ops run here would give this thread an OpenMP team of its own,
        # which slows a multi-threaded worker beside it (as `lam serve` never has one).
        import multiprocessing

        model_dir = Path(tmp) / "m"
        child = multiprocessing.get_context("spawn").Process(target=build_babyai_random_model, args=(model_dir,),
                                                             kwargs={"preset": a.preset})
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"Error: building the random {a.preset} model failed (exit {child.exitcode})")
        b = EmbeddedBackend(str(model_dir), max_batch_size=a.rows, num_threads=a.threads, dtype=a.dtype,
                            prefill_thread="off", prefix_cache_mb=0, max_new_tokens_limit=1024)
        if not b.skip_padding:
            raise SystemExit("Error: this model/device does not use the padding-skipping decode attention")
        room = b.max_context - a.max_len
        if room < 64:
            raise SystemExit(f"Error: --max-len {a.max_len} leaves under 64 tokens of this model's "
                             f"{b.max_context}-token context")
        b.eos_ids = set()  # rows run to their budget: a random model's eos would end them early
        rng = random.Random(a.seed)
        prompts = [[rng.randrange(3, b.vocab_size) for _ in range(rng.randrange(a.min_len, a.max_len))]
                   for _ in range(a.rows)]
        handles = [b.submit(q, SamplingParams(max_tokens=min(1024, b.max_context - len(q)), temperature=1.0, seed=i))
                   for i, q in enumerate(prompts)]
        while b.active_rows < a.rows:  # all rows prefilled and decoding
            time.sleep(0.05)
        ms = {"skip": [], "full": []}
        padding = []
        try:
            for _ in range(a.windows):
                for mode in ("skip", "full"):  # "full": plain transformers sdpa, as before this attention
                    b.model.set_attn_implementation(ATTN_NAME if mode == "skip" else "sdpa")
                    b.skip_padding = mode == "skip"
                    time.sleep(0.2)  # let the step in flight finish under the previous mode
                    s0 = dict(b.stats)
                    time.sleep(a.seconds)
                    s1 = dict(b.stats)
                    steps = (s1["decode_tokens"] - s0["decode_tokens"]) / a.rows
                    if b.active_rows < a.rows or steps < 1:
                        raise SystemExit("Error: rows finished before the last window; use fewer --windows "
                                         "or --seconds, or a shorter --max-len")
                    ms[mode].append(1000 * (s1["decode_s"] - s0["decode_s"]) / steps)
                    padding.append(1 - (s1["decode_kv_tokens"] - s0["decode_kv_tokens"])
                                   / (s1["decode_kv_padded_tokens"] - s0["decode_kv_padded_tokens"]))
        finally:
            for h in handles:
                h.cancel()
            b.close()
    med = {k: statistics.median(v) for k, v in ms.items()}
    summary = {"preset": a.preset, "dtype": a.dtype, "rows": a.rows, "threads": a.threads,
               "prompt_len": [a.min_len, a.max_len],
               "windows": a.windows, "seconds": a.seconds, "machine": f"{os.uname().machine} {os.cpu_count()} cpus",
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "kv_padding_share": round(statistics.fmean(padding), 3),
               "ms_per_step_skip": [round(x, 1) for x in ms["skip"]],
               "ms_per_step_full": [round(x, 1) for x in ms["full"]],
               "median_ms_skip": round(med["skip"], 1), "median_ms_full": round(med["full"], 1),
               "speedup": round(med["full"] / med["skip"], 2)}
    print(f"decode step, {a.rows} rows, KV padding {summary['kv_padding_share']:.0%}: skipping padding "
          f"{med['skip']:.1f} ms, whole batch {med['full']:.1f} ms -> {summary['speedup']}x", file=sys.stderr)
    emit(summary, a.out)


if __name__ == "__main__":
    main()
