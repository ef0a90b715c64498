"""The server the online RL phase rolls out against, and its weight pushes (training/rl.py).

    with served_policy("runs/train/export", None, {"threads": 2}) as srv:   # starts `lam serve` (its PID)
        srv.push("runs/rl/weights", "rl-iter-1")   # POST /v1/weights, then GET /v1/models shows version+1

Either the phase starts the embedded server itself on 127.0.0.1 (and stops it, by its PID, at the end) or
it is given the URL of one already running (`lam rl --model-url`), whose weights it then replaces too. A
push is checked end to end: the route's answer and `/v1/models` must both report the new version before the
next iteration's rollouts start, so no episode is sampled from weights the loop did not mean.
With `backend: vllm` (GPUs) the phase starts `vllm serve` with our worker extension and pushes through
vLLM's collective RPC instead (serving/vllm_weights.py); the version is then counted on this side, since
vLLM's /v1/models has no weights card.
"""
from __future__ import annotations

import os
from contextlib import contextmanager


class WeightPushError(RuntimeError):
    """The server refused the new weights, or did not report them: the rollouts would sample old weights."""


class ServedPolicy:
    """An OpenAI-compatible server with `POST /v1/weights`: its base URL, served name and weights version."""

    def __init__(self, base_url: str, api_key: str | None = None, vllm_model_dir: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("LAM_API_KEY") or None
        card = self.model_card()
        self.model = card["id"]
        self.vllm = None
        if vllm_model_dir:  # a `vllm serve` started with our worker extension
            from serving.vllm_weights import HTTPVLLMEngine, VLLMWeights

            self.vllm = VLLMWeights(HTTPVLLMEngine(self.base_url, self.api_key), vllm_model_dir)
        elif "weights" not in card:
            raise WeightPushError(f"{self.base_url} reports no weights version in /v1/models: the RL phase needs a "
                                  "server that takes new weights while serving (lam serve, the embedded backend)")

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def model_card(self) -> dict:
        import httpx

        r = httpx.get(self.base_url + "/models", headers=self._headers(), timeout=30)
        if r.status_code != 200:
            raise ConnectionError(f"GET {self.base_url}/models answered {r.status_code}: {r.text[:200]}")
        return r.json()["data"][0]

    def serves(self, model_dir: str) -> bool:
        """Whether the server still holds the weights it was started on, from `model_dir`."""
        if self.vllm:
            return self.vllm.version == 0
        card = self.model_card()["weights"]
        return card["version"] == 0 and os.path.realpath(card["source"]) == os.path.realpath(model_dir)

    def version(self) -> int:
        return self.vllm.version if self.vllm else int(self.model_card()["weights"]["version"])

    def push(self, path: str, label: str, timeout_s: float = 600.0) -> dict:
        """Serve the safetensors in `path` from now on; returns the weights card /v1/models reports."""
        import httpx

        if self.vllm:
            from serving.weight_update import WeightUpdateError

            try:
                return self.vllm.update_weights(path, label)
            except WeightUpdateError as e:
                raise WeightPushError(f"vllm refused the weights in {path}: {e}") from e
        before = self.version()
        r = httpx.post(self.base_url + "/weights", json={"path": os.path.abspath(path), "version": label},
                       headers=self._headers(), timeout=timeout_s)
        if r.status_code != 200:
            try:
                msg = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = r.text[:300]
            raise WeightPushError(f"the server refused the weights in {path} ({r.status_code}): {msg}")
        card = self.model_card()["weights"]
        if card["version"] != before + 1 or card["label"] != label:
            raise WeightPushError(f"after pushing {label}, /v1/models reports {card} (expected version {before + 1})")
        return card


@contextmanager
def served_policy(model_dir: str, model_url: str | None, server: dict | None = None, log=print):
    """A ServedPolicy: the given URL's server, or the embedded one started here on model_dir and stopped
    (by its PID) on the way out. `server`: serving.launch.start_server_subprocess keyword arguments."""
    if model_url:
        yield ServedPolicy(model_url)
        return
    from serving.launch import start_server_subprocess

    kwargs = {"threads": 2, "max_batch_size": 32, "max_new_tokens_limit": 512, **(server or {})}
    name = kwargs.pop("model_name", "lam-rl-policy")
    if kwargs.get("backend") == "vllm":
        from serving.vllm_backend import start_vllm

        handle = start_vllm(model_dir, port=kwargs.get("port") or _free_port(), served_model_name=name,
                            max_num_seqs=kwargs["max_batch_size"], weight_updates=True)
    else:
        handle = start_server_subprocess(model_dir, model_name=name, **kwargs)
    log(f"rl: serving {model_dir} at {handle.base_url} (pid {handle.pid})")
    try:
        yield ServedPolicy(handle.base_url, api_key="",
                           vllm_model_dir=model_dir if kwargs.get("backend") == "vllm" else None)
    finally:
        handle.stop()


def _free_port() -> int:
    from serving.launch import find_free_port

    return find_free_port()
