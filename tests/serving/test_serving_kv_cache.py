"""KV reuse: slab cache bookkeeping, the prefix cache, and greedy outputs equal to transformers' `generate`.

    .venv/bin/python -m pytest tests/serving/test_serving_kv_cache.py -q
"""
from __future__ import annotations

import torch
from serving_tiny_model import chat_prompt

from serving.embedded import SamplingParams
from serving.kv_cache import SlabLayer, rollback, snapshot
from serving.prefix_cache import BLOCK, PrefixCache


def _hf_greedy(backend, prompt: list[int], n: int) -> list[int]:
    """transformers' own greedy continuation (eos dropped, as in Choice.token_ids)."""
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        out = backend.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                     pad_token_id=backend.pad_id)
    new = out[0, len(prompt):].tolist()
    return new[:next((i for i, t in enumerate(new) if t in backend.eos_ids), len(new))]


def _greedy(backend, prompt: list[int], n: int) -> list[int]:
    return backend.generate_sync(prompt, SamplingParams(max_tokens=n, temperature=0.0), 60).choices[0].token_ids


def test_greedy_equals_transformers_generate(any_backend):
    backend = any_backend
    for text in ("hello agent", "move left " * 9):
        p = chat_prompt(backend, text)
        assert _greedy(backend, p, 20) == _hf_greedy(backend, p, 20)


def test_prefix_cache_hits_keep_outputs_exact(any_backend):
    backend = any_backend
    base = chat_prompt(backend, "go to the red door " * 4)
    first = _greedy(backend, base, 12)  # its KV (prompt + completion) is now cached
    hits_before = backend._prefix.hit_tokens
    follow_ups = [base + first[:6] + chat_prompt(backend, "blocked by the wall")]  # an agent's next turn
    follow_ups += [base + first[:2] + chat_prompt(backend, f"retry {i}") for i in range(3)]
    follow_ups += [chat_prompt(backend, "a fresh episode, nothing cached")]
    handles = [backend.submit(p, SamplingParams(max_tokens=10, temperature=0.0)) for p in follow_ups]
    batched = [h.future.result(60).choices[0].token_ids for h in handles]  # hits and a miss in one prefill
    assert backend._prefix.hit_tokens - hits_before >= 4 * (len(base) // BLOCK * BLOCK)
    assert batched == [_hf_greedy(backend, p, 10) for p in follow_ups]


def _layer(rows: int, width: int, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.full((rows, 2, width, 4), fill)
    return k, k + 0.5


def test_slab_rows_join_leave_and_grow():
    slab = SlabLayer(*_layer(2, 3, 1.0), length=3)
    slab.append_rows(*_layer(1, 5, 2.0))  # wider newcomer: old rows move right, padding is zero
    assert slab.keys.shape == (3, 2, 5, 4)
    assert slab.keys[0, 0, :, 0].tolist() == [0, 0, 1, 1, 1] and slab.keys[2, 0, :, 0].tolist() == [2] * 5
    k, v = slab.update(torch.full((3, 2, 1, 4), 9.0), torch.full((3, 2, 1, 4), 9.0))  # a decode step
    assert k.shape == (3, 2, 6, 4) and k[:, :, -1].eq(9).all()
    order = slab.keep_rows([2])  # row 2 moves into slot 0; nothing else is copied
    assert order == [2] and slab.rows == 1 and slab.keys[0, 0, :, 0].tolist() == [2] * 5 + [9]
    slab.drop_left(2)
    assert slab.keys.shape == (1, 2, 4, 4)
    slab.append_rows(*_layer(4, 6, 3.0))  # reclaims the dropped columns, grows the row slots
    assert slab.keys.shape == (5, 2, 6, 4) and slab.keys[0, 0, :, 0].tolist() == [0, 0, 2, 2, 2, 9]
    assert torch.equal(slab.values[1:], torch.full((4, 2, 6, 4), 3.5))


def test_slab_packed_step_places_every_token_and_rolls_back():
    slab = SlabLayer(*_layer(2, 3, 1.0), length=3)
    cache = type("Cache", (), {"layers": [slab]})()
    snap = snapshot(cache)
    # Row 2: a cached prefix of 2 then 3 new tokens; row 3: 2 new tokens; rows 0-1 decode one token each.
    slab.add_rows([(torch.full((2, 2, 4), 5.0), torch.full((2, 2, 4), 5.5)), None], [2 + 3 - 1, 2 - 1])
    assert slab.rows == 4 and slab.length == 4  # the view grew left for row 2
    assert slab.keys[0, 0, :, 0].tolist() == [0, 1, 1, 1] and slab.keys[2, 0, :, 0].tolist() == [5, 5, 0, 0]
    slab.scatter = (2, [(2, 2, 3), (3, 5, 2)])
    tokens = torch.arange(7.0).view(1, 1, 7, 1).expand(1, 2, 7, 4)  # token t's K is t
    k, v = slab.update(tokens, tokens + 0.5)
    slab.scatter = None
    assert k.shape == (4, 2, 5, 4)
    assert [k[r, 1, :, 3].tolist() for r in range(4)] == [[0, 1, 1, 1, 0], [0, 1, 1, 1, 1], [5, 5, 2, 3, 4],
                                                          [0, 0, 0, 5, 6]]
    assert v[2, 0, :, 0].tolist() == [5.5, 5.5, 2.5, 3.5, 4.5] and v[0, 0, -1, 0] == 0.5  # V goes where K does
    rollback(cache, snap)  # as if the forward had failed after this layer: the batch as it was
    assert slab.rows == 2 and torch.equal(slab.keys, torch.ones(2, 2, 3, 4))
    assert torch.equal(slab.values, torch.full((2, 2, 3, 4), 1.5))


def test_prefix_cache_lookup_and_budget():
    kv = lambda n: [(torch.ones(2, n, 4), torch.ones(2, n, 4))]  # noqa: E731  one layer, 64 bytes a token
    cache = PrefixCache(max_bytes=64 * 3 * BLOCK, max_entries=8)
    a = list(range(3 * BLOCK + 1))
    cache.store(a, kv(len(a)))
    assert len(cache) == 1 and cache.nbytes == 64 * 3 * BLOCK  # whole blocks only
    hit, n = cache.lookup(a[:2 * BLOCK] + [999] * 5)
    assert n == 2 * BLOCK and hit[0][0].shape == (2, 2 * BLOCK, 4)
    assert cache.lookup(a[:3 * BLOCK])[1] == 2 * BLOCK  # at least one token is left to prefill
    assert cache.lookup([5] + a)[1] == 0
    cache.store([7] * (2 * BLOCK), kv(2 * BLOCK))  # over the byte budget: the oldest entry goes
    assert len(cache) == 1 and cache.lookup(a)[1] == 0 and cache.lookup([7] * (2 * BLOCK + 1))[1] == 2 * BLOCK
