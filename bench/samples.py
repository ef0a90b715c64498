"""Training-sample building: every prefix tokenized on its own (the old way) vs one tokenization per
conversation with offset spans over the cores (training/tokenizer.py, training/samples.py); same run.

    lam collect --env toolworld --levels L1,L2,L3,L4,L5 --episodes 3000 --out /tmp/tw3000
    python bench/samples.py --data /tmp/tw3000 [--episodes 3000] [--workers 2]

Prints ms per conversation of each way, the ratio, and checks that both give the same samples.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="a dataset dir (lam collect --out)")
    p.add_argument("--episodes", type=int, default=3000)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--vocab-size", type=int, default=2048)
    a = p.parse_args()

    from data_collection.schema import group_steps
    from data_collection.store import TrajectoryStore
    from training.samples import build_samples, episode_conversations, tokenizer_texts
    from training.tokenizer import ChatEncoder, train_tokenizer

    episodes = group_steps(TrajectoryStore(Path(a.data)).read_rows("train"))[: a.episodes]
    convs = episode_conversations(episodes)
    style = "words" if any(c.tools for c in convs) else "phrases"
    tok = train_tokenizer(tokenizer_texts(convs), vocab_size=a.vocab_size, style=style)
    t0 = time.perf_counter()
    old = build_samples(convs, ChatEncoder(tok, verify_every=1), 1 << 20, workers=1)
    t1 = time.perf_counter()
    new = build_samples(convs, ChatEncoder(tok), 1 << 20, workers=a.workers)
    t2 = time.perf_counter()
    same = [(s.ids, s.labels) for s in old] == [(s.ids, s.labels) for s in new]
    ms_old, ms_new = (t1 - t0) / len(convs) * 1e3, (t2 - t1) / len(convs) * 1e3
    print(f"{len(convs)} conversations ({style} tokenizer): every prefix tokenized {ms_old:.1f} ms/conv, "
          f"one tokenization + {a.workers} workers {ms_new:.1f} ms/conv: {ms_old / ms_new:.2f}x; same samples: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
