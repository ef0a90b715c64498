"""Export to a Hugging Face model directory (config.json, model.safetensors, tokenizer, chat template)
that `AutoModelForCausalLM.from_pretrained`, the embedded server and vLLM all load."""
from __future__ import annotations

from pathlib import Path

from serving.value_marks import write_settings


def export_hf(engine, lm, tokenizer, out_dir: Path, zero_stage: int, rank: int = 0, value_marks: bool = False) -> Path:
    """value_marks: the model was trained on the marked view (serving/value_marks.py); written to lam_chat.json
    so the server renders and expands it the same way."""
    out_dir = Path(out_dir)
    if zero_stage == 3:
        # Parameters are sharded across ranks: gather a full copy (a collective, every rank joins).
        state = engine._zero3_consolidated_16bit_state_dict()
        state = {k.removeprefix("lm."): v for k, v in (state or {}).items()}
    else:
        state = {k: v.detach().cpu() for k, v in lm.state_dict().items()}
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        # tied embeddings: safetensors refuses shared tensors, and transformers re-ties them on load
        state.pop("lm_head.weight", None) if getattr(lm.config, "tie_word_embeddings", False) else None
        lm.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        write_settings(out_dir, value_marks)
        if hasattr(lm, "generation_config") and lm.generation_config is not None:
            lm.generation_config.eos_token_id = tokenizer.eos_token_id
            lm.generation_config.pad_token_id = tokenizer.pad_token_id
            lm.generation_config.save_pretrained(out_dir)
    return out_dir
