"""vLLM backend: build, print and launch a `vllm serve` subprocess (GPU machines only).

    LAM_VLLM_BIN=/opt/vllm/bin/vllm python -m serving.server --model MODEL_DIR --backend vllm --port 8000

vLLM is never imported (it is not even installed on CPU machines): we only run its executable, found via
the `vllm_bin` argument (from config), then env LAM_VLLM_BIN, then PATH.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from .launch import ServerProcess, default_model_name, popen_logged
from .model_dir import check_model_dir


def find_vllm_bin(vllm_bin: str | None = None) -> str | None:
    """Path of an executable `vllm`, or None."""
    candidate = vllm_bin or os.environ.get("LAM_VLLM_BIN") or shutil.which("vllm")
    if candidate and not os.path.isabs(candidate):
        candidate = shutil.which(candidate) or candidate
    if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    return None


def cuda_available() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:
        return False


def vllm_usable(vllm_bin: str | None = None) -> bool:
    """What `--backend auto` checks: a CUDA device and a vllm executable."""
    return cuda_available() and find_vllm_bin(vllm_bin) is not None


def chat_template_path(model_dir: str, chat_template: str | None = None) -> str | None:
    """The template file for `--chat-template`: explicit path, MODEL/chat_template.jinja, or the string in
    tokenizer_config.json written to a temp file (vLLM then renders exactly what the embedded backend does)."""
    if chat_template:
        return chat_template
    jinja = Path(model_dir) / "chat_template.jinja"
    if jinja.is_file():
        return str(jinja)
    try:
        tpl = json.loads((Path(model_dir) / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, ValueError):
        return None
    if not isinstance(tpl, str):
        return None
    fd, path = tempfile.mkstemp(prefix="lam-chat-template-", suffix=".jinja")
    with os.fdopen(fd, "w") as f:
        f.write(tpl)
    return path


def build_vllm_command(model_dir: str, *, host: str = "127.0.0.1", port: int = 8000,
                       served_model_name: str | None = None, chat_template: str | None = None,
                       enable_tools: bool = True, tool_call_parser: str = "hermes", vllm_bin: str = "vllm",
                       max_num_seqs: int | None = None, extra_args: list[str] | tuple = (),
                       weight_updates: bool = False) -> list[str]:
    """The exact `vllm serve` argv; the API key is passed as env VLLM_API_KEY, never on the command line.
    weight_updates: add our worker extension, so new weights load while serving (serving/vllm_weights.py)."""
    cmd = [vllm_bin, "serve", str(model_dir), "--host", host, "--port", str(port),
           "--served-model-name", served_model_name or default_model_name(model_dir)]
    if chat_template:
        cmd += ["--chat-template", chat_template]
    if enable_tools:  # our models emit Hermes-style <tool_call>{json}</tool_call>
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", tool_call_parser]
    if max_num_seqs:
        cmd += ["--max-num-seqs", str(max_num_seqs)]
    if weight_updates:
        from .vllm_weights import WORKER_EXTENSION

        cmd += ["--worker-extension-cls", WORKER_EXTENSION]
    return cmd + list(extra_args)


def start_vllm(model_dir: str, *, host: str = "127.0.0.1", port: int = 8000, served_model_name: str | None = None,
               api_key: str | None = None, vllm_bin: str | None = None, chat_template: str | None = None,
               enable_tools: bool = True, max_num_seqs: int | None = None, timeout: float = 900.0,
               extra_args: list[str] | tuple = (), wait: bool = True, inherit_output: bool = False,
               need_chat: bool = True, weight_updates: bool = False) -> ServerProcess:
    """Print and launch `vllm serve ...`, then wait for GET /health (model loading can take minutes).

    The directory is checked first (serving/model_dir.py, ModelDirError): vllm would otherwise take a bad
    path for a hub repo id, or start a server whose every chat request fails."""
    check_model_dir(model_dir, chat_template, need_chat=need_chat)
    exe = find_vllm_bin(vllm_bin)
    if exe is None:
        raise FileNotFoundError("vllm executable not found: pass vllm_bin, set LAM_VLLM_BIN or put vllm on PATH")
    name = served_model_name or default_model_name(model_dir)
    cmd = build_vllm_command(model_dir, host=host, port=port, served_model_name=name,
                             chat_template=chat_template_path(model_dir, chat_template), enable_tools=enable_tools,
                             vllm_bin=exe, max_num_seqs=max_num_seqs, extra_args=extra_args,
                             weight_updates=weight_updates)
    print("launching:", shlex.join(cmd), file=sys.stderr, flush=True)
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")  # models are local directories: never a hub lookup
    if api_key:
        env["VLLM_API_KEY"] = api_key
    if weight_updates:  # /collective_rpc exists in dev mode only; the workers import our extension from here
        env["VLLM_SERVER_DEV_MODE"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                          env.get("PYTHONPATH")]))
    proc, log_path = popen_logged(cmd, env, prefix="lam-vllm-", inherit_output=inherit_output)
    handle = ServerProcess(proc, host, port, log_path, name)
    if wait:
        handle.wait_healthy(timeout)
    return handle
