"""How the embedded engine runs, resolved from `lam serve`'s settings: device and dtype, replicas, prefill thread.

    python -c "from serving.engine_options import resolve_device_dtype as r; print(r())"

Each 'auto' is decided here from the machine (cores, torch threads, device) and the model (whether its KV cache
is a slab, serving/kv_cache.py); an impossible explicit setting is a ValueError that says why.
"""
from __future__ import annotations

import os

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PREFILL_THREAD_MODES = ("auto", "on", "off")
PACKED_PREFILL_MODES = ("auto", "off")


def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """'auto' device: cuda when available, else cpu; 'auto' dtype: bfloat16 on cuda, float32 on cpu."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return dev, DTYPES[dtype]


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_replicas(replicas: int | str, prefill_thread: str, *, slab: bool, device: torch.device,
                     max_batch_size: int) -> int:
    """'auto': on a CPU with one torch thread, one replica per usable core, keeping at least 16 rows each."""
    possible = slab and device.type == "cpu"
    if replicas == "auto":
        if not possible or prefill_thread == "on" or torch.get_num_threads() != 1:
            return 1
        return max(1, min(usable_cpus(), max_batch_size // 16))
    try:
        n = int(replicas)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(f"replicas must be 'auto' or a positive integer; got {replicas!r}")
    if n > 1 and not possible:
        raise ValueError("replicas > 1 need a CPU device and a model whose layers are all full attention "
                         "(slab KV cache)")
    if n > 1 and prefill_thread == "on":
        raise ValueError("replicas > 1 and prefill_thread 'on' cannot be combined: each replica prefills "
                         "in its own worker")
    if n > max_batch_size:
        raise ValueError(f"replicas ({n}) cannot exceed max_batch_size ({max_batch_size})")
    return n


def resolve_prefill_thread(mode: str, *, slab: bool, device: torch.device, max_batch_size: int,
                           replicas: int) -> bool:
    """'auto': overlap prefill with decode on a CPU when torch runs one thread and another core is free
    (`max_batch_size` is one replica's share)."""
    if mode not in PREFILL_THREAD_MODES:
        raise ValueError(f"prefill_thread must be one of {', '.join(PREFILL_THREAD_MODES)}; got {mode!r}")
    possible = slab and max_batch_size > 1 and device.type == "cpu"
    if mode == "on" and not possible:
        raise ValueError("prefill_thread 'on' needs a CPU device, max_batch_size > 1 and a model whose layers "
                         "are all full attention (slab KV cache)")
    # On a GPU both threads would queue on one device. With several intra-op threads the decode already has
    # the cores (two OpenMP teams would fight over them): auto only pairs two single-threaded workers.
    return mode == "on" or (mode == "auto" and possible and replicas == 1 and torch.get_num_threads() == 1
                            and usable_cpus() > 1)


def check_packed_prefill(mode: str, max_prefill_tokens: int) -> None:
    if mode not in PACKED_PREFILL_MODES:
        raise ValueError(f"packed_prefill must be one of {', '.join(PACKED_PREFILL_MODES)}; got {mode!r}")
    if max_prefill_tokens < 1:
        raise ValueError(f"max_prefill_tokens must be at least 1; got {max_prefill_tokens}")
