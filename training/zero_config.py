"""The DeepSpeed config, generated from the typed training config (or overridden by a raw JSON file)."""
from __future__ import annotations

import json
from pathlib import Path


def deepspeed_config(
    zero_stage: int,
    micro_batch: int,
    grad_accum: int,
    grad_clip: float,
    bf16: bool,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    bucket_size: int = 50_000_000,
    overlap_comm: bool = False,
    raw_json: str | None = None,
) -> dict:
    if raw_json:
        path = Path(raw_json)
        if not path.exists():
            raise FileNotFoundError(f"deepspeed config {raw_json} does not exist")
        return json.loads(path.read_text())
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    zero: dict = {"stage": zero_stage}
    if zero_stage >= 1:
        zero.update(reduce_bucket_size=bucket_size, overlap_comm=overlap_comm)
    if zero_stage >= 2:
        zero.update(allgather_bucket_size=bucket_size, contiguous_gradients=True)
    if zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_prefetch_bucket_size=bucket_size)
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_params and zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "bf16": {"enabled": bf16},
        "zero_optimization": zero,
        # we hand DeepSpeed torch's AdamW (fused on GPU), which ZeRO shards like its own
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # our own progress bar and metrics report instead
        "wall_clock_breakdown": False,
    }
