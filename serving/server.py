"""Serve a model over the OpenAI API with the embedded transformers backend or vLLM.

    python -m serving.server --model runs/sft/final --port 8000 --num-threads 2
    LAM_API_KEY=secret python -m serving.server --model runs/sft/final --backend auto --host 0.0.0.0

Binds 127.0.0.1 unless told otherwise. SIGINT/SIGTERM shut down gracefully: uvicorn stops accepting,
lets in-flight requests finish (up to --graceful-timeout s), then the backend worker is stopped.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from .launch import default_model_name
from .model_dir import ModelDirError, check_model_dir
from .value_marks import read_settings

log = logging.getLogger("serving")
BACKENDS = ("auto", "transformers", "vllm")


def resolve_backend(backend: str = "auto", vllm_bin: str | None = None) -> str:
    """'auto' -> 'vllm' only with CUDA and a vllm executable, else 'transformers'."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    from .vllm_backend import vllm_usable

    return "vllm" if vllm_usable(vllm_bin) else "transformers"


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, backend: str = "auto",
          api_key: str | None = None, max_batch_size: int = 32, num_threads: int | None = None, *,
          model_name: str | None = None, max_queue: int = 256, max_new_tokens_limit: int = 256,
          vllm_bin: str | None = None, chat_template: str | None = None, graceful_timeout: float = 30.0,
          log_level: str = "info", device: str = "auto", dtype: str = "auto", prefix_cache_mb: float = 256,
          prefill_thread: str = "auto", packed_prefill: str = "auto", max_prefill_tokens: int = 2048,
          replicas: str = "auto", no_chat: bool = False) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM. api_key defaults to env LAM_API_KEY.

    A model without a chat template is refused unless no_chat: then only /v1/completions serves, and
    /v1/chat/completions answers that the server's model has no chat template."""
    api_key = api_key if api_key is not None else (os.environ.get("LAM_API_KEY") or None)
    name = model_name or default_model_name(model_dir)
    try:  # before importing torch (seconds) and before vllm or the port: a wrong path is the commonest mistake
        check_model_dir(model_dir, chat_template, need_chat=not no_chat)
    except ModelDirError as e:
        raise SystemExit(f"Error: {e}") from None
    kind = resolve_backend(backend, vllm_bin)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)
    try:
        marked = read_settings(model_dir).get("value_marks", False)
    except ValueError as e:
        raise SystemExit(f"Error: {e}") from None
    if kind == "vllm" and marked and backend == "auto":
        log.info("%s was trained with value marks: serving it with the transformers backend", model_dir)
        kind = "transformers"
    if kind == "vllm" and marked:
        # `vllm serve` renders and parses by itself: it would feed the model unmarked prompts and hand out `$2`
        raise SystemExit(f"Error: {model_dir} was trained with value marks (its lam_chat.json), which only the "
                         "embedded backend renders and expands; serve it with --backend transformers")
    if kind == "vllm":
        return _serve_vllm(model_dir, host, port, name, api_key, max_batch_size, vllm_bin, chat_template, no_chat)

    import uvicorn

    from .embedded import EmbeddedBackend
    from .openai_server import create_app

    # The batch worker, the prefill thread and the HTTP event loop share one GIL: a thread coming back from a
    # torch op waits up to the switch interval (default 5 ms) whenever another one is running Python.
    sys.setswitchinterval(0.0005)
    try:
        engine = EmbeddedBackend(model_dir, max_batch_size=max_batch_size, max_queue=max_queue,
                                 num_threads=num_threads, max_new_tokens_limit=max_new_tokens_limit, device=device,
                                 dtype=dtype, prefix_cache_mb=prefix_cache_mb, prefill_thread=prefill_thread,
                                 packed_prefill=packed_prefill, max_prefill_tokens=max_prefill_tokens,
                                 replicas=replicas, chat_template=chat_template)
    except ValueError as e:  # a setting this model or device cannot take (e.g. --prefill-thread on with batch 1),
        raise SystemExit(f"Error: {e}") from None  # or a model that does not load (ModelDirError)
    if not no_chat and not engine.tokenizer.chat_template:
        engine.close()
        raise SystemExit(f"Error: the tokenizer in {model_dir} loaded without a chat template; pass "
                         "--chat-template FILE, or --no-chat to serve /v1/completions only")
    app = create_app(engine, name, api_key=api_key, chat=not no_chat)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=graceful_timeout, access_log=False)
    log.info("serving %s as %r on http://%s:%d/v1 (transformers backend on %s/%s, %d replica(s) of batch<=%d, "
             "prefill %s, decode attention %s)",
             model_dir, name, host, port, engine.device, str(engine.dtype).removeprefix("torch."), engine.replicas,
             engine.max_batch_size,
             "in its own thread" if engine.prefill_thread else
             "packed into the decode steps" if engine.packed else "between decode steps",
             "skips left padding" if engine.skip_padding else "sdpa over the whole batch")
    try:
        uvicorn.Server(config).run()  # installs SIGINT/SIGTERM handlers and drains on shutdown
    finally:
        engine.close()


def _serve_vllm(model_dir, host, port, name, api_key, max_batch_size, vllm_bin, chat_template, no_chat) -> None:
    from .vllm_backend import start_vllm

    # SIGTERM must unwind through `finally` so the vllm child is stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    handle = start_vllm(model_dir, host=host, port=port, served_model_name=name, api_key=api_key,
                        vllm_bin=vllm_bin, chat_template=chat_template, max_num_seqs=max_batch_size,
                        wait=False, inherit_output=True, need_chat=not no_chat)
    try:
        handle.wait_healthy(timeout=900)
        log.info("vllm healthy at %s", handle.base_url)
        handle.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        handle.stop(grace=30)


def add_server_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The server's flags; `lam serve` and `python -m serving.server` share them."""
    p.add_argument("--model", required=True, help="model directory (save_pretrained output)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--served-model-name", default=None, help="default: basename of --model")
    p.add_argument("--api-key", default=None, help="prefer env LAM_API_KEY (argv is visible in ps)")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=256, help="upper limit for max_tokens")
    p.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="transformers backend: auto (cuda if available), cpu, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="transformers backend: auto = bfloat16 on cuda, float32 on cpu")
    p.add_argument("--prefix-cache-mb", type=float, default=256,
                   help="transformers backend: KV of recent prompts kept for reuse (0 disables)")
    p.add_argument("--prefill-thread", default="auto", choices=["auto", "on", "off"],
                   help="transformers backend: prefill new requests in a second thread while the batch decodes "
                        "(auto: on a CPU with --num-threads 1 and another core free)")
    p.add_argument("--packed-prefill", default="auto", choices=["auto", "off"],
                   help="transformers backend without a prefill thread: new prompts join the running batch's "
                        "decode step in one forward, unpadded (auto: on a CPU when the model passes a check)")
    p.add_argument("--max-prefill-tokens", type=int, default=2048,
                   help="packed prefill: prompt tokens (times n, before prefix-cache hits) admitted into one "
                        "step; a longer request goes alone")
    p.add_argument("--replicas", default="auto",
                   help="transformers backend on a CPU: batches decoded side by side, one worker thread each, "
                        "sharing the model, queue and prefix cache; --max-batch-size is split between them "
                        "(auto: one per core with --num-threads 1, at least 16 rows each)")
    p.add_argument("--vllm-bin", default=None, help="vllm executable (default: env LAM_VLLM_BIN, then PATH)")
    p.add_argument("--chat-template", default=None, help="jinja template file (default: the model's own)")
    p.add_argument("--no-chat", action="store_true",
                   help="serve a model without a chat template: /v1/completions only (without this flag such a "
                        "model is refused at start-up)")
    p.add_argument("--graceful-timeout", type=float, default=30.0)
    p.add_argument("--log-level", default="info")
    return p


def run_from_args(a: argparse.Namespace) -> None:
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(a.model, host=a.host, port=a.port, backend=a.backend, api_key=a.api_key,
          max_batch_size=a.max_batch_size, num_threads=a.num_threads, model_name=a.served_model_name,
          max_queue=a.max_queue, max_new_tokens_limit=a.max_new_tokens, vllm_bin=a.vllm_bin,
          chat_template=a.chat_template, graceful_timeout=a.graceful_timeout, log_level=a.log_level,
          device=a.device, dtype=a.dtype, prefix_cache_mb=a.prefix_cache_mb,
          prefill_thread=a.prefill_thread, packed_prefill=a.packed_prefill,
          max_prefill_tokens=a.max_prefill_tokens, replicas=a.replicas, no_chat=a.no_chat)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__.split("\n")[0])
    run_from_args(add_server_args(p).parse_args(argv))


if __name__ == "__main__":
    main()
