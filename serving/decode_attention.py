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
"""
from __future__ import annotations

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


def slab_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, lam_blocks: list[tuple[int, int, int]] | None = None, **kwargs):
    """transformers attention function: sdpa, split by `lam_blocks` for one-token decode steps."""
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
