"""Models: Llama-architecture size presets built from a config, or any HF causal LM from a local path."""
from __future__ import annotations

import torch
from torch import nn

# name: (hidden, intermediate, layers, heads, kv_heads)
PRESETS = {
    "mini": (128, 512, 2, 4, 4),  # ~0.5M params: the outcome verifier trained from scratch (training/verifier.py)
    "tiny": (256, 768, 4, 4, 4),  # ~3.5M params: trains on 2 CPU cores in minutes
    "small": (512, 1536, 8, 8, 8),
    "base-100m": (768, 2048, 12, 12, 12),
    "0.4b": (1024, 4096, 24, 16, 8),
    "1b": (2048, 5632, 16, 32, 8),
}


def build_model(preset_or_path: str, vocab_size: int, max_positions: int = 1024, seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if preset_or_path not in PRESETS:
        return AutoModelForCausalLM.from_pretrained(preset_or_path, dtype=torch.float32)
    hidden, inter, layers, heads, kv = PRESETS[preset_or_path]
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        rope_theta=10000.0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


class ActionLoss(nn.Module):
    """Wraps a causal LM: the LM head runs only at positions that predict action tokens.

    With most tokens being state, this skips ~90% of the head's work; the wrapped model is what
    DeepSpeed shards, and `.lm` is what gets exported.

    context_weight > 0 (training only) adds the language-model loss of every other token of the
    conversation (requests, tool results, schemas) at that weight: a model trained from scratch then
    also learns from the text it must copy values out of (a name in the request, an id in a result),
    which the action tokens alone teach too slowly. The loss reported in eval mode is always the
    action-token loss, so runs with and without it compare."""

    def __init__(self, lm: nn.Module, context_weight: float = 0.0) -> None:
        super().__init__()
        self.lm, self.context_weight = lm, context_weight

    def forward(self, input_ids, attention_mask, labels):
        hidden = self.lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        target = labels[:, 1:]
        keep = target != -100
        if self.training and self.context_weight > 0:
            real = attention_mask[:, 1:].bool()
            logits = self.lm.lm_head(hidden[:, :-1][real])
            ce = nn.functional.cross_entropy(logits.float(), input_ids[:, 1:][real], reduction="none")
            weight = torch.where(keep[real], 1.0, self.context_weight)
            return (ce * weight).sum() / weight.sum(), int(keep.sum())
        logits = self.lm.lm_head(hidden[:, :-1][keep])
        loss = nn.functional.cross_entropy(logits.float(), target[keep])
        return loss, int(keep.sum())
