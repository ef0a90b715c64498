"""Decode attention that skips the running batch's left padding.

    python -c "from serving.decode_attention import plan_blocks; print(plan_blocks([0, 0, 90, 95], 100))"

In the slab cache (serving/kv_cache.py) every row is right-aligned to the batch's longest context, so a row
of 120 tokens in a batch whose longest row has 500 attends over 380 padding columns. On CPU a decode step's
attention is bound by reading K and V, so that padding costs its full price: with 32 BabyAI agents half the
columns read were padding. `plan_blocks` cuts the batch into runs of consecutive rows, each attending only
from the first column any of its rows needs; `slab_sdpa` (registered with transformers' AttentionInterface as
ATTN_NAME) runs one scaled_dot_product_attention per run. The plan is made once per decode step from the
attention mask and reaches every layer as the `lam_blocks` keyword of the model's forward; without it
(prefill, other callers) the function is transformers' sdpa.

A packed step (serving/embedded.py, packed prefill) sends a `PackedPlan` as `lam_packed` instead: the query is
one sequence holding the running rows' next tokens and then the new tokens of each joining prompt, and
`packed_attention` gives the first the runs above and each prompt causal attention over its own slab row.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTN_NAME = "lam_slab_sdpa"

# Cost of one more attention call, in row-columns read (a call's fixed overhead on CPU over the time one
# row-column of K and V takes; measured on the bench model, order of magnitude only).
CALL_COST = 96


def plan_blocks(first: list[int], width: int, call_cost: int = CALL_COST) -> list[tuple[int, int, int]]:
    """Runs of consecutive rows [(row_start, row_end, first_column), ...] covering every row, minimizing
    columns read plus `call_cost` per run; `first[i]` is row i's first real column of `width`."""
    n = len(first)
    best = [0] + [None] * n  # best[j]: cost of rows [0, j)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        lo = width
        for i in range(j - 1, -1, -1):  # run [i, j): starts at the smallest first column among its rows
            lo = min(lo, first[i])
            cost = best[i] + (j - i) * (width - lo) + call_cost
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], n
    while j > 0:
        i = cut[j]
        runs.append((i, j, min(first[i:j])))
        j = i
    return runs[::-1]


@dataclass
class PackedPlan:
    """One packed step's attention, shared by every layer: the running batch's rows [0, decode_rows) decode one
    token each (the first decode_rows tokens of the packed sequence), attending per run `blocks` with
    `decode_mask` ([decode_rows, 1, 1, columns], True = attend); then each prompt (slab row, first token in
    the packed sequence, its number of new tokens, its first column) attends causally over its own columns.
    """

    decode_rows: int
    blocks: list[tuple[int, int, int]]
    decode_mask: torch.Tensor | None
    prompts: list[tuple[int, int, int, int]] = field(default_factory=list)
    _causal: dict = field(default_factory=dict)

    def causal_mask(self, new: int, columns: int, device) -> torch.Tensor:
        """[new, columns]: query t sees every column up to its own (the last `new` columns are the new tokens)."""
        key = (new, columns)
        if key not in self._causal:
            q = torch.arange(new, device=device).unsqueeze(1) + (columns - new)
            self._causal[key] = torch.arange(columns, device=device).unsqueeze(0) <= q
        return self._causal[key]


def packed_attention(plan: PackedPlan, query, key, value, scaling: float | None, gqa: bool) -> torch.Tensor:
    """Attention of a packed step: query [1, heads, tokens, dim] against the slab's key/value
    [rows, kv_heads, columns, dim]; returns [1, tokens, heads, dim]."""
    out = query.new_empty((1, query.shape[2], query.shape[1], query.shape[3]))
    n = plan.decode_rows
    if n:
        q = query[0, :, :n].transpose(0, 1).unsqueeze(2)  # [rows, heads, 1, dim]
        for r0, r1, c0 in plan.blocks:
            mask = None if plan.decode_mask is None else plan.decode_mask[r0:r1, ..., c0:]
            o = F.scaled_dot_product_attention(q[r0:r1], key[r0:r1, :, c0:], value[r0:r1, :, c0:], attn_mask=mask,
                                               scale=scaling, enable_gqa=gqa)
            out[0, r0:r1] = o.squeeze(2)
    for row, t0, new, c0 in plan.prompts:
        k, v = key[row:row + 1, :, c0:], value[row:row + 1, :, c0:]
        mask = plan.causal_mask(new, k.shape[2], query.device)
        o = F.scaled_dot_product_attention(query[:, :, t0:t0 + new], k, v, attn_mask=mask, scale=scaling,
                                           enable_gqa=gqa)
        out[0, t0:t0 + new] = o[0].transpose(0, 1)
    return out


def slab_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, lam_blocks: list[tuple[int, int, int]] | None = None,
              lam_packed: PackedPlan | None = None, **kwargs):
    """transformers attention function: sdpa, split by `lam_blocks` for one-token decode steps, or a packed
    step's attention (`lam_packed`, see PackedPlan)."""
    if lam_packed is not None:
        if kwargs.get("position_bias") is not None:
            raise ValueError("packed steps cannot apply position biases")
        return packed_attention(lam_packed, query, key, value, scaling, key.shape[1] != query.shape[1]), None
    if (lam_blocks is None or query.shape[2] != 1 or len(lam_blocks) == 1 and lam_blocks[0][2] == 0
            or kwargs.get("position_bias") is not None):  # biases: leave them to transformers' sdpa
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    gqa = key.shape[1] != query.shape[1]
    out = query.new_empty(query.shape)
    for r0, r1, c0 in lam_blocks:
        mask = attention_mask
        if mask is not None:  # [rows or 1, heads or 1, 1, columns]
            mask = (mask if mask.shape[0] == 1 else mask[r0:r1])[..., c0:]
        out[r0:r1] = F.scaled_dot_product_attention(query[r0:r1], key[r0:r1, :, c0:], value[r0:r1, :, c0:],
                                                    attn_mask=mask, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_NAME, slab_sdpa)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)  # the same boolean masks sdpa gets


def first_columns(mask: torch.Tensor) -> list[int]:
    """First real column of each row of a (rows, columns) 0/1 mask (rows have at least one)."""
    return mask.argmax(dim=1).tolist()
