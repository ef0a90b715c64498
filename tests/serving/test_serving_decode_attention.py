"""Decode attention that skips left padding: the run plan is optimal, the math is sdpa's, outputs unchanged.

    .venv/bin/python -m pytest tests/serving/test_serving_decode_attention.py -q
"""
from __future__ import annotations

import itertools
import random

import torch
from serving_tiny_model import chat_prompt, patch_replicas
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from serving.decode_attention import PackedPlan, first_columns, plan_blocks, slab_sdpa
from serving.embedded import SamplingParams


def _cost(runs, first, width, call_cost):
    return sum((r1 - r0) * (width - min(first[r0:r1])) + call_cost for r0, r1, _ in runs)


def test_plan_blocks_is_a_cover_and_optimal():
    rng = random.Random(0)
    for _ in range(200):
        n, width, call_cost = rng.randint(1, 7), rng.randint(5, 60), rng.choice([0, 3, 20, 500])
        first = [rng.randrange(width) for _ in range(n)]
        runs = plan_blocks(first, width, call_cost)
        assert [r0 for r0, _, _ in runs] == [0] + [r1 for _, r1, _ in runs[:-1]] and runs[-1][1] == n
        assert all(c0 == min(first[r0:r1]) for r0, r1, c0 in runs)
        brute = min(_cost([(a, b, 0) for a, b in zip((0,) + cuts, cuts + (n,))], first, width, call_cost)
                    for k in range(n) for cuts in itertools.combinations(range(1, n), k))
        assert _cost(runs, first, width, call_cost) == brute


def test_plan_blocks_extremes():
    assert plan_blocks([0, 50, 90, 95], 100, call_cost=10**6) == [(0, 4, 0)]
    assert plan_blocks([0, 50, 90, 95], 100, call_cost=1) == [(0, 1, 0), (1, 2, 50), (2, 3, 90), (3, 4, 95)]
    assert first_columns(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 0, 1]])) == [2, 0, 1]


class _Heads(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True


def test_slab_sdpa_equals_sdpa_with_padding_gaps_and_gqa():
    torch.manual_seed(0)
    rows, width, dim = 6, 40, 16
    first = [0, 30, 12, 35, 5, 20]
    mask = torch.zeros(rows, width, dtype=torch.bool)
    for i, f in enumerate(first):
        mask[i, f:] = True
    mask[2, 15:18] = False  # a gap inside a row (cached prefix, padding, new tokens)
    mask4 = mask[:, None, None, :]
    for heads, kv_heads in ((4, 4), (4, 2)):
        q = torch.randn(rows, heads, 1, dim)
        k, v = torch.randn(rows, kv_heads, width, dim), torch.randn(rows, kv_heads, width, dim)
        module = _Heads(heads // kv_heads)
        want, _ = sdpa_attention_forward(module, q, k, v, mask4, scaling=dim ** -0.5)
        blocks = plan_blocks(first_columns(mask.long()), width, call_cost=0)
        assert len(blocks) > 2 and any(c0 > 0 for _, _, c0 in blocks)
        got, _ = slab_sdpa(module, q, k, v, mask4, scaling=dim ** -0.5, lam_blocks=blocks)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # Padding columns are never read: garbage there changes nothing.
        k2, v2 = k.clone(), v.clone()
        for i, f in enumerate(first):
            k2[i, :, :f], v2[i, :, :f] = 1e4, -1e4
        got2, _ = slab_sdpa(module, q, k2, v2, mask4, scaling=dim ** -0.5, lam_blocks=blocks)
        torch.testing.assert_close(got2, want, rtol=1e-5, atol=1e-5)
    # A mask broadcast over rows, and none at all
    q, k, v = torch.randn(rows, 4, 1, dim), torch.randn(rows, 4, width, dim), torch.randn(rows, 4, width, dim)
    shared = torch.zeros(1, 1, 1, width, dtype=torch.bool)
    shared[..., 10:] = True
    for m, blocks in ((shared, [(0, 2, 10), (2, rows, 5)]), (None, [(0, 3, 0), (3, rows, 0)])):
        want, _ = sdpa_attention_forward(_Heads(1), q, k, v, m, scaling=dim ** -0.5)
        got, _ = slab_sdpa(_Heads(1), q, k, v, m, scaling=dim ** -0.5, lam_blocks=blocks)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _attend(q, k, v, allowed):
    """Reference attention, written out: q [heads, n, dim], k/v [kv_heads, columns, dim], allowed [n, columns]."""
    k, v = (x.repeat_interleave(q.shape[0] // x.shape[0], dim=0) for x in (k, v))
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def test_packed_attention_gives_each_token_its_own_rows_columns():
    torch.manual_seed(0)
    heads, kv_heads, width, dim = 4, 2, 30, 8
    first = [0, 12, 25]  # decoding rows 0-2 (left padding), then prompts in rows 3 and 4
    prompts = [(3, 3, 5, 20), (4, 8, 2, 27)]  # (row, first token, new tokens, first column)
    k, v = torch.randn(5, kv_heads, width, dim), torch.randn(5, kv_heads, width, dim)
    q = torch.randn(1, heads, 3 + 5 + 2, dim)
    mask = torch.zeros(3, width, dtype=torch.bool)
    for i, f in enumerate(first):
        mask[i, f:] = True
    plan = PackedPlan(3, plan_blocks(first, width, call_cost=0), mask[:, None, None, :], prompts)
    got, _ = slab_sdpa(_Heads(heads // kv_heads), q, k, v, None, scaling=dim ** -0.5, lam_packed=plan)
    assert got.shape == (1, 10, heads, dim)
    for i in range(3):
        want = _attend(q[0, :, i:i + 1], k[i], v[i], mask[i:i + 1])
        torch.testing.assert_close(got[0, i], want[:, 0], rtol=1e-5, atol=1e-5)
    for row, t0, new, c0 in prompts:  # causal over its own columns: token t sees columns c0 .. width - new + t
        cols = torch.arange(width)
        allowed = (cols >= c0) & (cols.unsqueeze(0) <= torch.arange(new).unsqueeze(1) + width - new)
        want = _attend(q[0, :, t0:t0 + new], k[row], v[row], allowed)
        torch.testing.assert_close(got[0, t0:t0 + new], want.transpose(0, 1), rtol=1e-5, atol=1e-5)


def test_backend_skips_padding_and_keeps_greedy_outputs(any_backend, monkeypatch):
    backend = any_backend
    assert backend.skip_padding
    # Very different prompt lengths: short rows would attend over 100+ padding columns.
    prompts = [chat_prompt(backend, ("long context " * 12 if i % 2 else "") + f"task {i}") for i in range(6)]
    solo = [backend.generate_sync(p, SamplingParams(max_tokens=20, temperature=0.0), timeout=60) for p in prompts]
    plans = []
    if backend.packed:
        packed = backend._packed_forward

        def spy(*a):
            out = packed(*a)
            plans.append(out[2].blocks)
            return out

        patch_replicas(monkeypatch, backend, "_packed_forward", spy)
    else:
        forward = backend._forward

        def spy(ids, *a, **kw):
            if "lam_blocks" in kw:
                plans.append(kw["lam_blocks"])
            return forward(ids, *a, **kw)

        patch_replicas(monkeypatch, backend, "_forward", spy)
    before = dict(backend.stats)
    handles = [backend.submit(p, SamplingParams(max_tokens=20, temperature=0.0)) for p in prompts]
    for h, s in zip(handles, solo):
        assert h.future.result(60).choices[0].token_ids == s.choices[0].token_ids
    assert any(len(p) > 1 and any(c0 > 0 for _, _, c0 in p) for p in plans), plans
    # /metrics counters: real <= read < padded KV columns once padding was skipped
    real, read, padded = (backend.stats[k] - before[k] for k in
                          ("decode_kv_tokens", "decode_kv_read_tokens", "decode_kv_padded_tokens"))
    assert 0 < real <= read < padded


def test_a_model_that_rejects_the_keyword_keeps_plain_sdpa(tiny_model_dir, monkeypatch):
    from serving.embedded import EmbeddedBackend

    b = EmbeddedBackend(tiny_model_dir, max_batch_size=4, num_threads=1, prefill_thread="off")
    try:
        assert b.skip_padding and b.model.config._attn_implementation == "lam_slab_sdpa"
        forward = b.model.forward

        def strict(*args, lam_blocks=None, **kwargs):  # takes **kwargs but refuses ours, as some models might
            if lam_blocks is not None:
                raise TypeError("unexpected keyword argument 'lam_blocks'")
            return forward(*args, **kwargs)

        monkeypatch.setattr(b.model, "forward", strict)
        b.model.set_attn_implementation("sdpa")
        assert b._use_slab_attention() is False
        assert b.model.config._attn_implementation == "sdpa"
    finally:
        b.close()


def test_the_attention_probe_runs_in_the_worker_thread(tiny_model_dir, monkeypatch):
    """A forward in the constructing thread gave it an OpenMP team of its own, which slowed the worker's
    multi-threaded decode steps: the one-token probe must run in the worker thread, before __init__ returns."""
    import threading

    from serving.embedded import EmbeddedBackend

    seen, probe = [], EmbeddedBackend._use_slab_attention

    def recording(self):
        seen.append(threading.current_thread().name)
        return probe(self)

    monkeypatch.setattr(EmbeddedBackend, "_use_slab_attention", recording)
    b = EmbeddedBackend(tiny_model_dir, max_batch_size=4, num_threads=1, prefill_thread="off")
    try:
        assert seen == ["lam-embedded-worker"] and b.skip_padding
    finally:
        b.close()
