"""The running batch of the embedded engine: rows decoding together, joined by prefilled rows, retired when done.

    python -m pytest tests/serving/test_serving_backend.py -q -k "join or retire or greedy"

Rows are right-aligned in one KV cache (a slab, serving/kv_cache.py, for full-attention models): prefilled rows
`join` without stopping the others, each `decode_step` feeds every row its last sampled token, and `retire`
drops rows as soon as they hit eos, a stop string or their token budget, so short requests never wait for long
ones. A finished row's KV is kept in the engine's prefix cache: an agent's next prompt extends its last one.
Only the worker thread that owns a batch touches it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from . import decode_attention, kv_cache
from .backend_api import Choice, GenerationResult
from .prefix_cache import BLOCK
from .sequences import Request, Row, sample


@dataclass
class Prefilled:
    """A prefilled group waiting to join the running batch: its rows, KV cache, mask and first tokens."""

    rows: list[Row]
    cache: Any
    mask: torch.Tensor
    tokens: list[int]


class RunningBatch:
    def __init__(self, engine):
        """`engine`: the EmbeddedBackend (serving/embedded.py) whose model, prefix cache and stats it uses."""
        self.engine = engine
        self.rows: list[Row] = []
        self.cache = None
        self.mask: torch.Tensor | None = None  # (rows, kv_len) 1 = real token
        self.next: list[int] = []  # last sampled token per row = next decode input

    def join(self, p: Prefilled) -> None:
        """Add prefilled rows to the running batch."""
        engine = self.engine
        if engine._slab:  # the batch's slab is allocated once and then reused
            if self.cache is None:
                self.cache = kv_cache.empty_batch(p.cache, engine.max_batch_size, max(256, 2 * p.mask.shape[1]))
            with engine._stats.lock:
                engine._stats.joined_rows += len(p.rows) if self.rows else 0
            self.cache, self.mask = kv_cache.merge(self.cache, self.mask if self.rows else None, p.cache, p.mask)
            self.rows += p.rows
            self.next += p.tokens
        else:  # other caches cannot merge: the worker only admits requests when no batch is running
            self.rows, self.cache, self.mask, self.next = p.rows, p.cache, p.mask, p.tokens

    def decode_step(self) -> None:
        """One token for every row."""
        engine, rows = self.engine, self.rows
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(rows), 1))], dim=1)
        ids = torch.tensor(self.next, dtype=torch.long).unsqueeze(1).to(engine.device)
        positions = torch.tensor([r.pos for r in rows], dtype=torch.long).unsqueeze(1).to(engine.device)
        for r in rows:
            r.pos += 1
        extra, width, blocks = {}, self.mask.shape[1], [(0, len(rows), 0)]
        if engine.skip_padding:  # attend per run of rows from the first column the run needs
            blocks = decode_attention.plan_blocks(decode_attention.first_columns(self.mask), width)
            extra["lam_blocks"] = blocks
        engine._stats.observe(len(rows), "decode")
        t0 = time.perf_counter()
        logits, self.cache = engine._forward(ids, self.mask, positions, self.cache, **extra)
        self.next = sample(logits, rows, engine._vocab)
        with engine._stats.lock:
            engine._stats.totals["decode_s"] += time.perf_counter() - t0
            engine._stats.count_decode(self.mask, blocks)
        for r, t in zip(rows, self.next):
            r.accept(t, engine.eos_ids, engine.decode)

    def retire(self) -> int:
        """Drop finished/cancelled rows and resolve requests whose rows are all done; returns the rows that left."""
        keep = []
        for i, r in enumerate(self.rows):
            req = r.req
            if req.cancelled:
                continue
            if not r.finish:
                keep.append(i)
                continue
            if r.reported:
                continue
            r.reported = True
            self._remember(i, r)
            req.choices[r.index] = Choice(r.index, r.text, r.out_ids, r.finish)
            req.completion_tokens += r.n_sampled
            if all(c is not None for c in req.choices) and not req.future.done():
                self.engine._stats.add(requests=1)
                req.future.set_result(GenerationResult(req.choices, len(req.prompt_ids), req.completion_tokens))
        if len(keep) == len(self.rows):
            return 0
        if not keep:
            if kv_cache.is_slab(self.cache):
                kv_cache.clear(self.cache)  # keep the buffers for the next batch
            else:
                self.cache = None
            left = len(self.rows)
            self.rows, self.mask, self.next = [], None, []
            return left
        if kv_cache.is_slab(self.cache):
            keep = kv_cache.keep_rows(self.cache, keep)  # moves only the last rows into the gaps
        else:
            try:
                self.cache.batch_select_indices(torch.tensor(keep, device=self.engine.device))
            except Exception:  # no row selection: keep computing finished rows, ignore their output
                return 0
        left = len(self.rows) - len(keep)
        self.rows = [self.rows[i] for i in keep]
        self.next = [self.next[i] for i in keep]
        self.mask = self.mask[keep]
        if kv_cache.is_slab(self.cache):  # drop left-padding columns no remaining row needs
            first = int(self.mask.any(dim=0).int().argmax())
            if first > 0:
                for layer in self.cache.layers:
                    layer.drop_left(first)
                self.mask = self.mask[:, first:]
        return left

    def drop(self) -> list[Request]:
        """Empty the batch after a failed step; returns the requests of its rows."""
        lost = [r.req for r in self.rows]
        self.rows, self.cache, self.mask, self.next = [], None, None, []
        return lost

    def _remember(self, i: int, r: Row) -> None:
        """Copy a finished row's KV (prompt + fed completion tokens, whole blocks) into the prefix cache."""
        engine = self.engine
        if engine._prefix is None or not kv_cache.is_slab(self.cache):
            return
        fed = r.req.prompt_ids + r.sampled[:-1]  # the last sampled token was never fed
        columns = self.mask[i].nonzero().squeeze(1)
        n = len(fed) // BLOCK * BLOCK
        if n and len(columns) == len(fed):
            kv = kv_cache.row_kv(self.cache, i, columns[:n])
            with engine._prefix_lock:
                engine._prefix.store(fed[:n], kv)
