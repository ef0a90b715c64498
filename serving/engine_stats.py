"""The embedded engine's counters, one object shared by all its replica workers and read by /metrics.

    python -c "from serving.engine_stats import EngineStats as S; s = S(); s.add(decode_tokens=3); print(s.totals)"

Every worker thread (each replica's worker and the prefill thread) adds into the same totals under one lock, so
the server's metrics and the benchmarks see the engine as a whole, however many batches run side by side.
"""
from __future__ import annotations

import threading
from typing import Callable

import torch


class EngineStats:
    def __init__(self):
        self.lock = threading.Lock()
        # Worker totals for /metrics and benchmarks: wall and CPU seconds busy (CPU time stays meaningful on a
        # shared machine; summed over the worker and the prefill thread), seconds in forward passes, prompt tokens
        # prefilled (and with padding), tokens decoded.
        self.totals = {"busy_s": 0.0, "busy_cpu_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0, "prefill_tokens": 0,
                       "prefill_padded_tokens": 0, "decode_tokens": 0, "decode_kv_tokens": 0,
                       "decode_kv_padded_tokens": 0, "decode_kv_read_tokens": 0, "requests": 0}
        self.max_batch_seen = 0  # largest forward batch so far (rows), over all replicas
        self.joined_rows = 0  # rows that joined an already running batch (continuous batching)
        self.on_batch: Callable[[int, str], None] | None = None  # metrics hook: (rows, 'prefill'|'decode')

    def add(self, **amounts: float) -> None:
        with self.lock:
            for key, amount in amounts.items():
                self.totals[key] += amount

    def observe(self, rows: int, phase: str) -> None:
        """One forward pass of `rows` rows is about to run."""
        self.max_batch_seen = max(self.max_batch_seen, rows)
        if self.on_batch is not None:
            self.on_batch(rows, phase)

    def count_decode(self, mask: torch.Tensor, blocks: list[tuple[int, int, int]]) -> None:
        """Totals of one decode step (caller holds `lock`): its tokens and KV columns real, with every row's
        padding, and those attention read (runs of rows from their first column)."""
        t = self.totals
        t["decode_tokens"] += mask.shape[0]
        t["decode_kv_tokens"] += int(mask.sum())
        t["decode_kv_padded_tokens"] += mask.numel()
        t["decode_kv_read_tokens"] += sum((r1 - r0) * (mask.shape[1] - c0) for r0, r1, c0 in blocks)
