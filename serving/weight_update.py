"""New weights into a running embedded engine, without a restart: what an online RL phase pushes after each update.

    curl -s http://127.0.0.1:8000/v1/weights -H 'Authorization: Bearer KEY' \
         -d '{"path": "runs/rl/step-40/export", "version": "rl-step-40"}'

The new tensors are read from a Hugging Face export directory (`*.safetensors`, as training/export.py writes
it) and checked against the served model before anything changes: every tensor must name a parameter or
buffer of the model with the same shape and dtype, and every parameter must be given (a tied weight by any of
its names). A refused update leaves the previous weights serving. An accepted one waits for the requests in
flight to finish (no completion mixes two versions; new requests queue meanwhile), copies the tensors in
place, drops the prefix cache (its K/V came from the old weights) and bumps the version `/v1/models` reports.
vLLM's equivalent for weights already in GPU memory is its `update_weights`/collective-RPC path; the
vLLM backend here does not offer this route (it answers 501).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch


class WeightUpdateError(ValueError):
    """The update was refused; the message names the file or tensor. Nothing was changed."""


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """All tensors of the safetensors files of an export directory (or one .safetensors file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.safetensors"))
        if not files:
            raise WeightUpdateError(f"{p} holds no *.safetensors file (export the model with `lam train`)")
    elif p.suffix == ".safetensors" and p.is_file():
        files = [p]
    else:
        raise WeightUpdateError(f"{p} is neither a model directory nor a .safetensors file")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            out.update(load_file(str(f)))
        except (SafetensorError, OSError, json.JSONDecodeError) as e:
            raise WeightUpdateError(f"cannot read {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return out


def check_weights(model: torch.nn.Module, new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's tensors that `new` replaces, by name; WeightUpdateError on any mismatch."""
    current = model.state_dict(keep_vars=True)
    unknown = sorted(set(new) - set(current))
    if unknown:
        raise WeightUpdateError(f"tensor {unknown[0]!r} is not in the served model"
                                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    for name, t in new.items():
        cur = current[name]
        if tuple(t.shape) != tuple(cur.shape):
            raise WeightUpdateError(f"tensor {name!r} has shape {list(t.shape)} but the served model's is {list(cur.shape)}")
        if t.dtype != cur.dtype:
            raise WeightUpdateError(f"tensor {name!r} is {t.dtype} but the served model runs {cur.dtype}: "
                                    "export in the serving dtype")
    given = {current[n].data_ptr() for n in new}
    for name, p in model.named_parameters():
        if p.data_ptr() not in given:  # tied weights share storage: any of their names covers them
            raise WeightUpdateError(f"parameter {name!r} is missing from the new weights")
    return {n: current[n] for n in new}


def apply_weights(engine, path: str, label: str | None = None, drain_timeout_s: float = 120.0) -> dict:
    """Check, drain, copy, bump the version; returns the new weights card. `engine`: an EmbeddedBackend."""
    new = read_weights(path)
    targets = check_weights(engine.model, new)
    cv = engine._cv
    with cv:
        if engine._paused:
            raise WeightUpdateError("another weight update is in progress")
        engine._paused = True  # workers admit nothing new; queued requests wait for the new weights
        cv.notify_all()
        deadline = time.monotonic() + drain_timeout_s
        while any(w.slots or w.prefilling or w.ready for w in engine.workers):
            if not cv.wait(timeout=max(0.0, deadline - time.monotonic())) and time.monotonic() >= deadline:
                engine._paused = False
                cv.notify_all()
                raise WeightUpdateError(f"requests in flight did not finish within {drain_timeout_s:.0f} s; "
                                        "the previous weights keep serving")
    try:
        with torch.no_grad():
            for name, t in new.items():
                targets[name].data.copy_(t.to(targets[name].device))
        engine.drop_prefix_cache()
        engine.weights_version += 1
        engine.weights_label = label or f"v{engine.weights_version}"
        engine.weights_source = str(path)
    finally:
        with cv:
            engine._paused = False
            cv.notify_all()
    return engine.weights_card()
