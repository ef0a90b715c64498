"""Embedded transformers backend (the engine): continuous batching of chat/completion requests on CPU or one GPU.

    python -c "from serving.embedded import EmbeddedBackend, SamplingParams as P; b = EmbeddedBackend('MODEL_DIR'); \
print(b.generate_sync(b.encode(b.render_chat([{'role': 'user', 'content': 'hi'}])), P(temperature=0)))"

The engine owns the model, the tokenizer, the request queue, the prefix cache and the stats, and implements the
backend protocol (serving/backend_api.py): HTTP handlers `submit()` requests into a bounded queue and await
their futures. Its parts, each in a file of its own:
- serving/replica.py: replica workers, each a worker thread (and optionally a prefill thread) driving one batch;
  `replicas` of them (on a CPU with one torch thread: one per core) decode side by side from the one queue;
- serving/running_batch.py: the running batch: rows join, decode one token per step, retire when done, so
  short requests never wait for long ones; a finished row's KV goes to the prefix cache
  (serving/prefix_cache.py): an agent's next prompt extends its last one, so only the new tokens are prefilled;
- serving/prefill.py: prefill strategies: padded groups (in the worker, or overlapped in a prefill thread:
  `prefill_thread`, 'auto' turns it on on a CPU when torch runs one thread, a core is free and there is one
  replica), or packed into the decode steps' forwards (`packed_prefill`, when no prefill thread runs);
- serving/engine_options.py: what 'auto' means for each of these settings; serving/engine_stats.py: the totals.

Padding-skipping decode attention (`skip_padding`, on for sdpa models on a CPU): rows of the running batch
are right-aligned to the longest one, and a CPU decode step is bound by reading K and V, so each decode
step attends per run of rows from the first column the run needs (serving/decode_attention.py).

Underscored attributes are the engine's internals shared with its parts above, not the backend protocol.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import threading
from collections import deque
from pathlib import Path
from typing import Callable

import torch

from . import decode_attention, kv_cache
from .backend_api import (BackendClosedError, BackendError, Choice, EventCallback, GenerationResult,
                          PromptValidationError, QueueFullError, SamplingParams)
from .chat_format import encode_text, render_chat_text, template_supports_tools
from .value_marks import read_settings
from .engine_options import (check_packed_prefill, resolve_device_dtype, resolve_prefill_thread,
                             resolve_replicas)
from .engine_stats import EngineStats
from .grammar import Vocab
from .model_dir import ModelDirError
from .prefill import check_packed
from .prefix_cache import PrefixCache
from .replica import ReplicaWorker
from .sequences import GenerationHandle, Request, fail

__all__ = ["EmbeddedBackend", "GenerationHandle", "SamplingParams", "GenerationResult", "Choice", "BackendError",
           "QueueFullError", "PromptValidationError", "BackendClosedError",  # re-exported for callers
           "resolve_device_dtype"]

log = logging.getLogger(__name__)


class EmbeddedBackend:
    def __init__(self, model_dir: str, max_batch_size: int = 32, max_queue: int = 256,
                 num_threads: int | None = None, max_new_tokens_limit: int = 256, *, device: str = "auto",
                 dtype: str = "auto", prefix_cache_mb: float = 256, prefill_thread: str = "auto",
                 packed_prefill: str = "auto", max_prefill_tokens: int = 2048, replicas: int | str = "auto",
                 chat_template: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.model_dir = model_dir
        # a model trained on the marked view (lam_chat.json): the chat route renders and expands it
        self.value_marks = bool(read_settings(model_dir).get("value_marks", False))
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.max_new_tokens_limit = max_new_tokens_limit
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        try:  # local directories only: a bad path must never turn into a hub lookup
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype,
                                                              local_files_only=True).to(self.device).eval()
        except Exception as e:  # what check_model_dir cannot see from headers: one line, not a traceback
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelDirError(f"cannot load the model in {model_dir}: {first}") from e
        if chat_template:
            self.tokenizer.chat_template = Path(chat_template).read_text()
        self._supports_tools: bool | None = None
        cfg = self.model.config.get_text_config()
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        self.max_context = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
                               or 2048)
        self.eos_ids = self._eos_ids()
        self._vocab = Vocab(self.decode, self.encode, min(self.eos_ids)) if self.eos_ids else None  # constraints
        self.pad_id = next((i for i in (self.tokenizer.pad_token_id, *sorted(self.eos_ids), 0) if i is not None))
        params = inspect.signature(self.model.forward).parameters
        # transformers 5 renamed past_key_values -> cache; older/remote models still use the old name.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._pass_positions = "position_ids" in params
        self._logits_to_keep = "logits_to_keep" in params
        # Fast tokenizers mutate their Rust state on encode ("Already borrowed" under threads): serialize.
        self._tok_lock = threading.Lock()
        # The request queue, shared by every replica's threads; they all wait on the one condition.
        self._cv = threading.Condition()
        self._pending: deque[Request] = deque()
        self._closing = False
        self._paused = False  # a weight update is draining the batches (serving/weight_update.py)
        self.weights_version, self.weights_label, self.weights_source = 0, "v0", model_dir
        # Slab caches (serving/kv_cache.py) let rows join a running batch and reuse cached prefixes; models
        # with other cache layers (sliding windows, ...) are batched per round without either.
        self._slab = kv_cache.is_slab_config(self.model.config)
        self._prefix = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 and self._slab else None
        self._prefix_lock = threading.Lock()  # the prefill thread looks up while the worker stores
        # Decode attention over runs of rows, skipping left padding (serving/decode_attention.py). Measured on
        # CPU only, where decode attention is bound by reading KV; on a GPU the extra kernel
        # launches would be paid for columns that cost little to read. Set up by the first worker thread.
        self.skip_padding = False
        self._stats = EngineStats()
        # Largest share of a prefill batch that may be padding before it is split by prompt length: on CPU
        # padding costs its full compute, on a GPU a wider batch is nearly free.
        self._max_padding = 0.5 if self.device.type == "cuda" else 0.2
        check_packed_prefill(packed_prefill, max_prefill_tokens)
        self.max_prefill_tokens = max_prefill_tokens
        # Replicas: on a CPU with one torch thread, one batch per core, each run by a worker thread of its own
        # (data parallel: they share the model, the queue and the prefix cache); max_batch_size is split
        # between them.
        self.replicas = resolve_replicas(replicas, prefill_thread, slab=self._slab, device=self.device,
                                         max_batch_size=self.max_batch_size)
        self.max_batch_size = max_batch_size // self.replicas
        self.prefill_thread = resolve_prefill_thread(prefill_thread, slab=self._slab, device=self.device,
                                                     max_batch_size=self.max_batch_size, replicas=self.replicas)
        # Prompts packed into the decode steps' forwards (without a prefill thread): set by the first worker
        # thread at start, once the model passes the check.
        self.packed = False
        # With a prefill thread too (packing what arrives while it is busy) the agent bench gained nothing
        # (10.98 vs 10.97 steps/s, bench/RESULTS.md): one or the other.
        self._packed_mode = "off" if self.prefill_thread or self.max_batch_size == 1 else packed_prefill
        # The first worker decides the attention before the others start: they all take its decisions.
        self.workers = [ReplicaWorker(self, 0, on_start=self._choose_attention)]
        self.workers[0].start()
        for i in range(1, self.replicas):
            self.workers.append(ReplicaWorker(self, i))
            self.workers[i].start()

    def _choose_attention(self) -> None:
        """Padding-skipping decode attention and packed steps, if this model takes them (first worker thread).
        Here, not in __init__: a forward in the constructing thread gave that thread an OpenMP team of its own,
        and the worker's multi-threaded decode steps ran 20-40% slower beside it."""
        with torch.inference_mode():
            if self._slab and self.device.type == "cpu":
                self.skip_padding = self._use_slab_attention()
            self.packed = self.skip_padding and self._packed_mode == "auto" and check_packed(self)

    # ---------------------------------------------------------------- stats (shared by every replica)
    @property
    def stats(self) -> dict:
        """Worker totals for /metrics and benchmarks (serving/engine_stats.py)."""
        return self._stats.totals

    @property
    def max_batch_seen(self) -> int:
        return self._stats.max_batch_seen

    @max_batch_seen.setter
    def max_batch_seen(self, value: int) -> None:  # benchmarks reset it between levels
        self._stats.max_batch_seen = value

    @property
    def joined_rows(self) -> int:
        return self._stats.joined_rows

    @property
    def on_batch(self) -> Callable[[int, str], None] | None:
        return self._stats.on_batch

    @on_batch.setter
    def on_batch(self, hook: Callable[[int, str], None] | None) -> None:  # set by the server's metrics
        self._stats.on_batch = hook

    @property
    def prefix_cache_hit_ratio(self) -> float:
        """Share of prompt tokens whose KV came from the prefix cache."""
        p = self._prefix
        return p.hit_tokens / p.lookup_tokens if p is not None and p.lookup_tokens else 0.0

    # ---------------------------------------------------------------- the model (any worker thread)
    def _forward(self, input_ids, mask, positions, cache, **extra):
        kwargs = {"input_ids": input_ids, "attention_mask": mask, "use_cache": True, self._cache_kw: cache, **extra}
        if self._pass_positions:  # padding: each row counts positions from its own first real token
            kwargs["position_ids"] = positions
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1  # only the last position is needed: saves the vocab projection
        out = self.model(**kwargs)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return out.logits[:, -1, :].float(), new_cache

    def _new_cache(self):
        try:
            return kv_cache.new_cache(self.model.config)
        except Exception:  # unusual model/config: let the model build its own cache
            return None

    def _empty_batch(self, rows: int):
        """An empty slab cache for `rows` rows, shaped by a one-token forward."""
        probe = self._new_cache()
        self.model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=self.device), use_cache=True,
                   **{self._cache_kw: probe})
        return kv_cache.empty_batch(probe, rows, 256)

    def _packed_forward(self, cache, mask: torch.Tensor | None, tokens: list[int], positions: list[int],
                        prompts: list[tuple[list[int], list | None, int]]):
        """One forward over a packed sequence, no padding: the next token of each of the cache's rows (`tokens`
        at `positions`, `mask` their (rows, columns) attention mask) and the new tokens of each prompt, given
        as (new tokens, cached prefix KV per layer or None, prefix length m). The prompts become rows after
        the current ones. Returns float logits (one row per running row, then per prompt), the new mask and
        the attention plan."""
        n, layers = len(tokens), cache.layers
        widths = [m + len(new) - 1 for new, _, m in prompts]  # each prompt's columns before this step's one
        if prompts:
            for li, layer in enumerate(layers):
                layer.add_rows([kv[li] if kv is not None else None for _, kv, _ in prompts], widths)
        width = layers[0].length  # columns before this step
        old = mask if mask is not None else torch.zeros((0, width), dtype=torch.long, device=self.device)
        if old.shape[1] < width:  # the slab grew left for a long prompt
            old = torch.cat([old.new_zeros((old.shape[0], width - old.shape[1])), old], dim=1)
        new_mask = old.new_zeros((len(prompts), width))
        for j, w in enumerate(widths):
            new_mask[j, width - w:] = 1
        mask = torch.cat([torch.cat([old, new_mask]), old.new_ones((n + len(prompts), 1))], dim=1)
        ids, pos, keep = list(tokens), list(positions), list(range(n))
        plan = decode_attention.PackedPlan(n, [], None)
        if n:
            first = decode_attention.first_columns(mask[:n])
            plan.blocks = decode_attention.plan_blocks(first, width + 1)
            plan.decode_mask = mask[:n].bool()[:, None, None, :]
        for j, (new, _, m) in enumerate(prompts):
            plan.prompts.append((n + j, len(ids), len(new), width - widths[j]))
            ids += new
            pos += range(m, m + len(new))
            keep.append(len(ids) - 1)
        as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=self.device)  # noqa: E731
        scatter = (n, [(row, t0, new) for row, t0, new, _ in plan.prompts])
        for layer in layers:
            layer.scatter = scatter
        try:
            out = self.model(input_ids=as_tensor(ids)[None], position_ids=as_tensor(pos)[None], use_cache=True,
                             logits_to_keep=as_tensor(keep), lam_packed=plan, **{self._cache_kw: cache})
        finally:
            for layer in layers:
                layer.scatter = None
        return out.logits[0].float(), mask, plan

    def _use_slab_attention(self) -> bool:
        """Switch sdpa models to decode_attention.slab_sdpa (same math, skips left padding in decode steps);
        it needs the forward to pass extra keywords down to the attention function."""
        params = inspect.signature(self.model.forward).parameters.values()
        if (getattr(self.model.config, "_attn_implementation", None) != "sdpa"
                or not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)):
            return False
        try:
            with torch.inference_mode():  # one token: the forward must take the keyword it will be given
                self.model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=self.device), use_cache=False,
                           lam_blocks=[(0, 1, 0)])
            self.model.set_attn_implementation(decode_attention.ATTN_NAME)
        except Exception as exc:  # a model that rejects the keyword or cannot switch keeps plain sdpa
            log.info("padding-skipping decode attention not used: %s", exc)
            return False
        return self.model.config._attn_implementation == decode_attention.ATTN_NAME

    # ---------------------------------------------------------------- text helpers (any thread)
    def _eos_ids(self) -> set[int]:
        ids = set()
        for src in (getattr(self.model.generation_config, "eos_token_id", None), self.tokenizer.eos_token_id):
            ids.update([src] if isinstance(src, int) else (src or []))
        return ids

    @property
    def chat_template(self) -> str:
        tpl = self.tokenizer.chat_template
        return tpl if isinstance(tpl, str) else " ".join((tpl or {}).values())

    @property
    def supports_tools(self) -> bool:
        if self._supports_tools is None:
            with self._tok_lock:
                self._supports_tools = template_supports_tools(self.tokenizer)
        return self._supports_tools

    # Prompts go through serving/chat_format.py, the functions training renders its samples with: the
    # tokens fed for an agent's step are the training sample's prefix for that step.
    def render_chat(self, messages: list[dict], tools: list[dict] | None = None, **template_kwargs) -> str:
        with self._tok_lock:
            return render_chat_text(self.tokenizer, messages, tools, add_generation_prompt=True, **template_kwargs)

    def encode(self, text: str) -> list[int]:
        with self._tok_lock:
            return encode_text(self.tokenizer, text)

    def decode(self, ids: list[int]) -> str:
        with self._tok_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # ---------------------------------------------------------------- submission (any thread)
    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def active_rows(self) -> int:
        return sum(len(w.batch.rows) for w in self.workers)

    def validate(self, prompt_ids: list[int], params: SamplingParams, prompt_param: str = "messages") -> int:
        """Check a request against the model limits; returns the token budget of each choice."""
        if not prompt_ids:
            raise PromptValidationError("the prompt is empty", prompt_param)
        if len(prompt_ids) >= self.max_context:
            raise PromptValidationError(
                f"the prompt is {len(prompt_ids)} tokens but this model's context is {self.max_context} "
                "tokens (including the completion); shorten it", prompt_param)
        if params.max_tokens is not None and not 1 <= params.max_tokens <= self.max_new_tokens_limit:
            raise PromptValidationError(
                f"max_tokens must be between 1 and {self.max_new_tokens_limit}", "max_tokens")
        if not 1 <= params.n <= self.max_batch_size:
            raise PromptValidationError(f"n must be between 1 and {self.max_batch_size}", "n")
        if params.grammar is not None and self._vocab is None:
            raise PromptValidationError("this server's model has no eos token, so it cannot end a constrained "
                                        "output (response_format / tool_choice)", "response_format")
        room = self.max_context - len(prompt_ids)
        return min(params.max_tokens or self.max_new_tokens_limit, room)

    def submit(self, prompt_ids: list[int], params: SamplingParams, on_event: EventCallback | None = None,
               prompt_param: str = "messages") -> GenerationHandle:
        """Queue a request; raises PromptValidationError, QueueFullError or BackendClosedError."""
        max_new = self.validate(prompt_ids, params, prompt_param)
        params = dataclasses.replace(params, stop=[s for s in params.stop if s])  # "" would match everywhere
        req = Request(list(prompt_ids), params, on_event, max_new)
        with self._cv:
            if self._closing:
                raise BackendClosedError("backend is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFullError()
            self._pending.append(req)
            self._cv.notify_all()  # the worker and the prefill thread wait on the same condition
        return GenerationHandle(req)

    async def generate(self, prompt_ids: list[int], params: SamplingParams, on_event: EventCallback | None = None,
                       prompt_param: str = "messages") -> GenerationResult:
        handle = self.submit(prompt_ids, params, on_event, prompt_param)
        try:
            return await asyncio.wrap_future(handle.future)
        except asyncio.CancelledError:
            handle.cancel()  # client went away: stop spending compute on it
            raise

    def generate_sync(self, prompt_ids: list[int], params: SamplingParams | None = None,
                      timeout: float | None = None) -> GenerationResult:
        return self.submit(prompt_ids, params or SamplingParams()).future.result(timeout)

    def update_weights(self, path: str, label: str | None = None, drain_timeout_s: float = 120.0) -> dict:
        """Serve the weights in `path` from now on (POST /v1/weights); see serving/weight_update.py."""
        from .weight_update import apply_weights

        return apply_weights(self, path, label, drain_timeout_s)

    def weights_card(self) -> dict:
        return {"version": self.weights_version, "label": self.weights_label, "source": self.weights_source}

    def drop_prefix_cache(self) -> None:
        if self._prefix is not None:
            with self._prefix_lock:
                self._prefix.clear()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the workers; queued and running requests fail with BackendClosedError."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        for w in self.workers:
            w.join(timeout)
        for req in list(self._pending) + [req for w in self.workers for req in w.unfinished()]:
            fail(req, BackendClosedError("backend is shutting down"))
        self._pending.clear()
        for w in self.workers:
            w.ready.clear()
