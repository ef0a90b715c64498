"""LoRA adapters (peft) on the model being trained: only the adapters learn, the export is merged.

    lam train --data runs/data --config configs/train/tiny.yaml --out runs/lora model=/path/to/hf-model \
        'lora={r: 8, alpha: 16}'

`wrap` injects the adapters into the model in place (peft's get_peft_model) and freezes every base
weight; `merged` folds B·A·alpha/r into the base weights (merge_and_unload), so the export is a plain
Hugging Face model that `lam serve`, vLLM and AutoModelForCausalLM load without peft. The adapter
alone is saved too (OUT/adapter), for servers that apply adapters at request time.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # rank of each adapter's update B·A
    r: int = Field(8, ge=1)
    # the update is scaled by alpha / r
    alpha: float = 16.0
    # dropout on the adapter's input during training
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # names of the Linear modules that get an adapter (Llama: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


def wrap(lm, settings: LoraSettings):
    """The peft model around `lm`; `lm` itself now holds the adapters and is what the loss wraps."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in lm.named_modules()}
    missing = [t for t in settings.target_modules if t not in names]
    if missing:
        raise ValueError(f"lora.target_modules {missing} are not modules of this model; "
                         f"its Linear modules include {sorted(n for n in names if n.endswith('proj'))[:8]}")
    cfg = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                     target_modules=list(settings.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(lm, cfg)


def trainable_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merged(peft_model, adapter_dir: Path | None = None):
    """Save the adapter (when asked), then return the base model with the adapters folded in."""
    if adapter_dir is not None:
        peft_model.save_pretrained(str(adapter_dir))
    return peft_model.merge_and_unload()
