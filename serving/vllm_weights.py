"""New weights into a running vLLM server without a restart (GPU machines): the vLLM side of what
serving/weight_update.py does for the embedded backend, for an online RL phase's pushes.

    # the server, started with weight updates on (start_vllm(..., weight_updates=True) adds both):
    VLLM_SERVER_DEV_MODE=1 vllm serve EXPORT --worker-extension-cls serving.vllm_weights.LamWeightsWorker ...
    # the client (the trainer's side):
    w = VLLMWeights(HTTPVLLMEngine("http://127.0.0.1:8000"), "EXPORT")
    w.update_weights("runs/rl/weights", "rl-iter-3")   # checks, loads on every worker, drops the prefix cache

How vLLM takes them: in dev mode (`VLLM_SERVER_DEV_MODE=1`) `vllm serve` has `POST /collective_rpc`
({"method", "args"}: string arguments only), which calls the named method on every GPU worker and returns
each one's result. `--worker-extension-cls` adds our method to vLLM's workers: `lam_load_weights(path)` reads
the export's safetensors and passes them, by their Hugging Face names, to the model's own `load_weights`,
which maps them onto vLLM's fused (qkv, gate_up) and tensor-parallel-sharded parameters. `POST
/reset_prefix_cache` then drops the K/V the old weights computed. This is the file-system route (as
prime-rl's FileSystemWeightUpdateWorker); vLLM's NCCL/IPC weight-transfer engine (`--weight-transfer-config`)
is the faster route when trainer and server share GPUs, at the price of a process group across them.

Everything is checked here, before vLLM is called: the new files must hold exactly the tensors of the export
the server started from, with the same shapes and dtypes (safetensors headers, read without loading data).
A refused update (WeightUpdateError) leaves the served weights as they were. Nothing here imports vllm.
"""
from __future__ import annotations

import os
from pathlib import Path

from .weight_update import WeightUpdateError

RPC_METHOD = "lam_load_weights"
# safetensors header dtypes by the names torch (and our errors) use
DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
          "I8": "int8", "U8": "uint8", "BOOL": "bool"}
WORKER_EXTENSION = "serving.vllm_weights.LamWeightsWorker"


def safetensors_index(path: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor name: (shape, dtype)} of an export directory's (or one file's) safetensors, from their headers."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p] if p.suffix == ".safetensors" and p.is_file() else []
    if not files:
        raise WeightUpdateError(f"{p} holds no *.safetensors file (export the model with `lam train`)"
                                if p.is_dir() else f"{p} is neither a model directory nor a .safetensors file")
    index = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():
                    sl = st.get_slice(name)
                    dtype = str(sl.get_dtype())
                    index[name] = (tuple(sl.get_shape()), DTYPES.get(dtype, dtype.lower()))
        except (SafetensorError, OSError) as e:
            raise WeightUpdateError(f"cannot read {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return index


def check_update(served: dict, new: dict) -> None:
    """WeightUpdateError unless `new` names exactly `served`'s tensors with the same shapes and dtypes."""
    unknown = sorted(set(new) - set(served))
    if unknown:
        raise WeightUpdateError(f"tensor {unknown[0]!r} is not in the served model"
                                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    missing = sorted(set(served) - set(new))
    if missing:
        raise WeightUpdateError(f"tensor {missing[0]!r} is missing from the new weights"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for name, (shape, dtype) in new.items():
        want_shape, want_dtype = served[name]
        if shape != want_shape:
            raise WeightUpdateError(f"tensor {name!r} has shape {list(shape)} but the served model's is {list(want_shape)}")
        if dtype != want_dtype:
            raise WeightUpdateError(f"tensor {name!r} is {dtype} but the served checkpoint is {want_dtype}: "
                                    "export in the checkpoint's dtype")


class HTTPVLLMEngine:
    """The engine handle of a running `vllm serve` in dev mode: its /collective_rpc and /reset_prefix_cache."""

    def __init__(self, root_url: str, api_key: str | None = None, timeout_s: float = 600.0) -> None:
        self.root_url, self.timeout_s = root_url.rstrip("/").removesuffix("/v1"), timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _post(self, route: str, body: dict | None = None):
        import httpx

        r = httpx.post(self.root_url + route, json=body, headers=self.headers, timeout=self.timeout_s)
        if r.status_code == 404:
            raise WeightUpdateError(f"{self.root_url}{route} does not exist: start vllm with VLLM_SERVER_DEV_MODE=1 "
                                    f"and --worker-extension-cls {WORKER_EXTENSION} (start_vllm(weight_updates=True))")
        if r.status_code != 200:
            raise WeightUpdateError(f"vllm {route} answered {r.status_code}: {r.text[:300]}")
        return r.json() if r.content else None

    def collective_rpc(self, method: str, args: list[str]) -> list:
        return (self._post("/collective_rpc", {"method": method, "args": args}) or {}).get("results", [])

    def reset_prefix_cache(self) -> None:
        self._post("/reset_prefix_cache")


class VLLMWeights:
    """update_weights / weights_card, as the embedded backend has them, over a vLLM engine handle: anything with
    `collective_rpc(method, args) -> [result per worker]` and `reset_prefix_cache()` (HTTPVLLMEngine, or an
    in-process `vllm.LLM` wrapped to those two calls)."""

    def __init__(self, engine, model_dir: str) -> None:
        self.engine, self.served = engine, safetensors_index(model_dir)
        self.version, self.label, self.source = 0, "v0", str(model_dir)

    def update_weights(self, path: str, label: str | None = None) -> dict:
        new = safetensors_index(path)
        check_update(self.served, new)  # nothing reaches vLLM unless every tensor fits
        results = self.engine.collective_rpc(RPC_METHOD, [os.path.abspath(path)])
        if not results:
            raise WeightUpdateError("vllm ran the weight load on no worker")
        for i, r in enumerate(results):
            if not isinstance(r, dict) or r.get("tensors") != len(new):
                raise WeightUpdateError(f"vllm worker {i} loaded {r!r}, expected {len(new)} tensors: the served "
                                        "weights may be mixed; push the previous export again or restart the server")
        self.engine.reset_prefix_cache()
        self.version += 1
        self.label, self.source = label or f"v{self.version}", str(path)
        return self.weights_card()

    def weights_card(self) -> dict:
        return {"version": self.version, "label": self.label, "source": self.source}


class LamWeightsWorker:
    """Mixed into vLLM's GPU workers by `--worker-extension-cls serving.vllm_weights.LamWeightsWorker` (vLLM
    supplies `self.model_runner`); POST /collective_rpc {"method": "lam_load_weights", "args": [PATH]} runs it."""

    def lam_load_weights(self, path: str) -> dict:
        import torch

        from .weight_update import read_weights

        weights = read_weights(path)
        with torch.no_grad():  # vLLM's loader maps HF names onto its fused, sharded parameters and copies to GPU
            self.model_runner.model.load_weights(weights=iter(weights.items()))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return {"tensors": len(weights)}
