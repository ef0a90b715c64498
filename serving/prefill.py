"""Prefill strategies of the embedded engine: how admitted prompts get their KV cache and first token.

    python -m pytest tests/serving/test_serving_backend.py -q -k "prefill or packed"

Padded groups (`prefill_groups`): one forward per group of prompts of similar new-token counts, each row
[pad][cached prefix][pad][new tokens]; run by the worker between decode steps, or by the prefill thread beside
them (serving/replica.py), whose groups then join the running batch as soon as they are ready.

Packed (`packed_step`, used when no prefill thread runs): the admitted prompts' new tokens join the running
rows' next tokens in one forward over a packed sequence, without padding (vLLM's mixed prefill/decode batches),
so the weights are read once for both; each prompt attends causally over its own columns of the slab
(serving/decode_attention.py). Used only once `check_packed` shows this model's packed logits equal its plain
forward's.

Both reuse cached prompt prefixes (serving/prefix_cache.py): only the new tokens are prefilled.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterator

import torch

from . import kv_cache
from .running_batch import Prefilled, RunningBatch
from .sequences import Request, Row, sample

log = logging.getLogger(__name__)

# Each function takes `engine`, the EmbeddedBackend (serving/embedded.py): its model calls, prefix cache, stats.


def prefix_hits(engine, reqs: list[Request]) -> dict:
    """id(request) -> (cached prefix KV per layer, prefix length) from the engine's prefix cache."""
    if engine._prefix is None:
        return {}
    with engine._prefix_lock:  # the prefill thread looks up while workers store
        return {id(q): engine._prefix.lookup(q.prompt_ids) for q in reqs}


def prefill_groups(engine, reqs: list[Request]) -> Iterator[Prefilled]:
    """Prefill the admitted requests, reusing cached prefixes, in groups of similar new-token counts
    (yielded one by one, shortest first)."""
    hits = prefix_hits(engine, reqs)
    if not engine._slab:
        yield prefill_group(engine, reqs, hits)
        return
    new = {id(q): len(q.prompt_ids) - hits.get(id(q), (None, 0))[1] for q in reqs}
    # Prefill is compute-bound on CPU: padding every prompt to the longest one wasted a third of it.
    group: list[Request] = []
    for q in sorted(reqs, key=lambda q: new[id(q)]):  # ascending: q is the longest of its group
        grown = group + [q]
        padded = sum(g.params.n for g in grown) * new[id(q)]
        if group and sum(new[id(g)] * g.params.n for g in grown) < (1 - engine._max_padding) * padded:
            yield prefill_group(engine, group, hits)
            grown = [q]
        group = grown
    yield prefill_group(engine, group, hits)


def prefill_group(engine, reqs: list[Request], hits: dict) -> Prefilled:
    """One forward over some prompts. Row i holds [pad][cached prefix m_i][pad][new tokens]."""
    rows = [Row(req, i) for req in reqs for i in range(req.params.n)]
    prefixes = [hits.get(id(r.req), (None, 0)) for r in rows]
    width = max(m for _, m in prefixes)  # cached columns
    news = [r.req.prompt_ids[m:] for r, (_, m) in zip(rows, prefixes)]
    span = max(len(t) for t in news)
    ids = torch.full((len(rows), span), engine.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width + span), dtype=torch.long)
    for i, (new, (_, m)) in enumerate(zip(news, prefixes)):
        ids[i, span - len(new):] = torch.tensor(new, dtype=torch.long)
        mask[i, width - m:width] = 1
        mask[i, width + span - len(new):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, width:]
    ids, mask, positions = ids.to(engine.device), mask.to(engine.device), positions.to(engine.device)
    cache = (kv_cache.from_prefixes(engine.model.config, [p for p, _ in prefixes], width, span) if width
             else engine._new_cache())
    engine._stats.observe(len(rows), "prefill")
    t0 = time.perf_counter()
    logits, cache = engine._forward(ids, mask, positions, cache)
    tokens = sample(logits, rows, engine._vocab)
    engine._stats.add(prefill_s=time.perf_counter() - t0, prefill_tokens=sum(len(t) for t in news),
                      prefill_padded_tokens=len(rows) * span)
    for r, t in zip(rows, tokens):
        r.accept(t, engine.eos_ids, engine.decode)
    return Prefilled(rows, cache, mask, tokens)


def packed_step(engine, batch: RunningBatch, admitted: list[Request],
                release: Callable[[list[Request], Exception], None]) -> None:
    """The running rows' decode step and the admitted requests' prefill in one packed forward: the weights
    are read once for both, and no prompt is padded. If the forward fails with new prompts in it, they are
    `release`d (failed) and the running rows decode without them."""
    rows = batch.rows
    new_rows = [Row(q, i) for q in admitted for i in range(q.params.n)]
    hits = prefix_hits(engine, admitted) if admitted else {}
    prompts = []
    for r in new_rows:
        kv, m = hits.get(id(r.req), (None, 0))
        prompts.append((r.req.prompt_ids[m:], kv, m))
    if batch.cache is None:
        batch.cache = engine._empty_batch(engine.max_batch_size)
    t0 = time.perf_counter()
    snap = kv_cache.snapshot(batch.cache) if rows and kv_cache.is_slab(batch.cache) else None
    try:
        logits, mask, plan = engine._packed_forward(batch.cache, batch.mask if rows else None, batch.next,
                                                    [r.pos for r in rows], prompts)
    except Exception as exc:
        if not new_rows or snap is None:
            raise
        # The newcomers fail, not the running batch: back to the step before, and decode it alone.
        log.exception("packed step with new prompts failed; the running rows decode without them")
        kv_cache.rollback(batch.cache, snap)
        release(admitted, exc)
        new_rows, prompts = [], []
        logits, mask, plan = engine._packed_forward(batch.cache, batch.mask, batch.next, [r.pos for r in rows], [])
    tokens = sample(logits, rows + new_rows, engine._vocab)
    elapsed = time.perf_counter() - t0
    stats = engine._stats
    if rows:
        stats.observe(len(rows), "decode")
    if new_rows:
        stats.observe(len(new_rows), "prefill")
    for r in rows:
        r.pos += 1
    with stats.lock:
        stats.totals["decode_s" if rows else "prefill_s"] += elapsed
        new_tokens = sum(len(p[0]) for p in prompts)
        stats.totals["prefill_tokens"] += new_tokens
        stats.totals["prefill_padded_tokens"] += new_tokens  # packed: no padding
        if rows:
            stats.count_decode(mask[:len(rows)], plan.blocks)
            stats.joined_rows += len(new_rows)
    batch.rows, batch.mask, batch.next = rows + new_rows, mask, tokens
    for r, t in zip(batch.rows, tokens):
        r.accept(t, engine.eos_ids, engine.decode)


def check_packed(engine) -> bool:
    """Whether packed steps give this model's plain forward's logits: a 5-token prompt, then its decode step
    packed with two more prompts (one reusing the first's KV as a cached prefix), against each sequence run
    alone."""
    a, b, c = [3, 1, 4, 1, 5], [9, 2, 6], [3, 1, 4, 1, 7, 8, 2]
    model, device = engine.model, engine.device
    try:
        plain = torch.stack([model(input_ids=torch.tensor([x], device=device), use_cache=False)
                             .logits[0, -1].float() for x in (a + [5], b, c)])
        cache = engine._empty_batch(2)
        _, mask, _ = engine._packed_forward(cache, None, [], [], [(a, None, 0)])
        prefix = kv_cache.row_kv(cache, 0, mask[0].nonzero().squeeze(1)[:4])  # c starts with a[:4]
        logits, _, _ = engine._packed_forward(cache, mask, [5], [5], [(b, None, 0), (c[4:], prefix, 4)])
    except Exception as exc:  # a model whose forward does not take packed sequences
        log.info("packed steps not used: %s", exc)
        return False
    ok = bool(torch.allclose(logits, plain, rtol=0.05, atol=0.05 * float(plain.abs().max()) + 1e-3))
    if not ok:
        log.info("packed steps not used: their logits differ from the model's plain forward")
    return ok
