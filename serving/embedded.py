"""Embedded transformers backend: continuous batching of chat/completion requests on CPU or one GPU.

    python -c "from serving.embedded import EmbeddedBackend, SamplingParams as P; b = EmbeddedBackend('MODEL_DIR'); \
print(b.generate_sync(b.encode(b.render_chat([{'role': 'user', 'content': 'hi'}])), P(temperature=0)))"

One worker thread owns the running batch. HTTP handlers `submit()` requests into a bounded queue; each worker
iteration admits pending requests (up to `max_batch_size` rows), prefills them in padded groups, merges
their KV cache into the running batch (serving/kv_cache.py), and then runs one decode step for every active
row. Rows leave the batch as soon as they hit eos, a stop string or their token budget, so short requests
never wait for long ones. A finished row's KV is kept in a prefix cache (serving/prefix_cache.py): an agent's
next prompt extends its last one, so only the new tokens are prefilled.

Overlapped prefill (`prefill_thread`; 'auto' turns it on on a CPU when torch runs one thread, a core is free
and there is one replica): a second thread admits and prefills new requests while the worker decodes, and
hands them over ready to join the batch, so the compute-bound prefill runs on another core instead of
stalling every running row (prefill and decode disaggregated, as DistServe or vLLM's disaggregated prefill
do across GPUs).

Packed prefill (`packed`, used when no prefill thread runs, e.g. with several torch threads): the admitted
prompts' new tokens join the running rows' next tokens in one forward over a packed sequence, without
padding (vLLM's mixed prefill/decode batches), so the weights are read once for both; each prompt attends
causally over its own columns of the slab (serving/decode_attention.py). It is used only once a check at
start shows this model's packed logits equal its plain forward's; `max_prefill_tokens` bounds the prompt
tokens one step admits.

Replicas (`replicas`, on a CPU with one torch thread: one per core): several batches decoded side by side,
each run by a worker thread of its own, sharing the model, the request queue, the prefix cache and the
stats (data parallelism inside one server; a prompt joins whichever replica admits it first).

Padding-skipping decode attention (`skip_padding`, on for sdpa models on a CPU): rows of the running batch
are right-aligned to the longest one, and a CPU decode step is bound by reading K and V, so each decode
step attends per run of rows from the first column the run needs (serving/decode_attention.py).
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from . import decode_attention, kv_cache
from .backend_api import (BackendClosedError, BackendError, Choice, EventCallback, GenerationResult,
                          PromptValidationError, QueueFullError, SamplingParams)
from .chat_format import encode_text, render_chat_text, template_supports_tools
from .grammar import Vocab
from .model_dir import ModelDirError
from .prefix_cache import BLOCK, PrefixCache
from .sequences import GenerationHandle, Request, Row, fail, sample

__all__ = ["EmbeddedBackend", "GenerationHandle", "SamplingParams", "GenerationResult", "Choice", "BackendError",
           "QueueFullError", "PromptValidationError", "BackendClosedError"]  # re-exported for callers

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """'auto' device: cuda when available, else cpu; 'auto' dtype: bfloat16 on cuda, float32 on cpu."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
    return dev, DTYPES[dtype]


PREFILL_THREAD_MODES = ("auto", "on", "off")
PACKED_PREFILL_MODES = ("auto", "off")


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class _Prefilled:
    """A prefilled group waiting to join the running batch: its rows, KV cache, mask and first tokens."""

    rows: list[Row]
    cache: Any
    mask: torch.Tensor
    tokens: list[int]


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
        self._cv = threading.Condition()
        self._pending: deque[Request] = deque()
        self._init_batch()
        # Slab caches (serving/kv_cache.py) let rows join a running batch and reuse cached prefixes; models
        # with other cache layers (sliding windows, ...) are batched per round without either.
        self._slab = kv_cache.is_slab_config(self.model.config)
        self._prefix = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 and self._slab else None
        self._prefix_lock = threading.Lock()  # the prefill thread looks up while the worker stores
        # Decode attention over runs of rows, skipping left padding (serving/decode_attention.py). Measured on
        # CPU only, where decode attention is bound by reading KV; on a GPU the extra kernel
        # launches would be paid for columns that cost little to read. Set up by the worker thread (below).
        self.skip_padding = False
        self._stats_lock = threading.Lock()
        # Largest share of a prefill batch that may be padding before it is split by prompt length: on CPU
        # padding costs its full compute, on a GPU a wider batch is nearly free.
        self._max_padding = 0.5 if self.device.type == "cuda" else 0.2
        self.on_batch: Callable[[int, str], None] | None = None  # metrics hook: (rows, 'prefill'|'decode')
        self.max_batch_seen = 0  # largest forward batch so far (rows), over all replicas
        self.joined_rows = 0  # rows that joined an already running batch (continuous batching)
        # Worker totals for /metrics and benchmarks: wall and CPU seconds busy (CPU time stays meaningful on a
        # shared machine; summed over the worker and the prefill thread), seconds in forward passes, prompt tokens
        # prefilled (and with padding), tokens decoded.
        self.stats = {"busy_s": 0.0, "busy_cpu_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0, "prefill_tokens": 0,
                      "prefill_padded_tokens": 0, "decode_tokens": 0, "decode_kv_tokens": 0,
                      "decode_kv_padded_tokens": 0, "decode_kv_read_tokens": 0, "requests": 0}
        if packed_prefill not in PACKED_PREFILL_MODES:
            raise ValueError(f"packed_prefill must be one of {', '.join(PACKED_PREFILL_MODES)}; "
                             f"got {packed_prefill!r}")
        if max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be at least 1; got {max_prefill_tokens}")
        self.max_prefill_tokens = max_prefill_tokens
        # Replicas: on a CPU with one torch thread, one batch per core, each run by a worker thread of its own
        # (data parallel: they share the model, the queue and the prefix cache); max_batch_size is split
        # between them.
        self.replicas = self._resolve_replicas(replicas, prefill_thread)
        self.max_batch_size = max_batch_size // self.replicas
        self._primary: EmbeddedBackend | None = None  # set on the other replicas
        self._replicas = [self]
        self.prefill_thread = self._resolve_prefill_thread(prefill_thread)
        # Prompts packed into the decode steps' forwards (without a prefill thread): set by the worker thread at
        # start, once the model passes the check.
        self.packed = False
        # With a prefill thread too (packing what arrives while it is busy) the agent bench gained nothing
        # (10.98 vs 10.97 steps/s, bench/RESULTS.md): one or the other.
        self._packed_mode = "off" if self.prefill_thread or self.max_batch_size == 1 else packed_prefill
        self._threads = [threading.Thread(target=self._loop, name="lam-embedded-worker", daemon=True)]
        if self.prefill_thread:
            self._threads.append(threading.Thread(target=self._prefill_loop, name="lam-embedded-prefill",
                                                  daemon=True))
        for t in self._threads:
            t.start()
        self._started.wait()
        for i in range(1, self.replicas):
            self._replicas.append(self._replica(i))

    def _init_batch(self) -> None:
        """The state of one batch (one per replica)."""
        self._ready: deque[_Prefilled] = deque()  # prefilled by the prefill thread, not yet in the batch
        self._slots = 0  # rows admitted and not retired (prefilling, ready or in the batch); under _cv
        self._prefilling = 0  # rows the prefill thread is working on; under _cv
        self._rows: list[Row] = []
        self._cache = None
        self._mask: torch.Tensor | None = None  # (rows, kv_len) 1 = real token
        self._next: list[int] = []  # last sampled token per row = next decode input
        self._started = threading.Event()
        self._closing = False

    def _replica(self, i: int) -> EmbeddedBackend:
        """Another batch with its own worker thread, sharing everything else with this backend (the model,
        tokenizer, queue, prefix cache, stats and the attention decisions its worker made at start)."""
        r = object.__new__(EmbeddedBackend)
        r.__dict__.update(self.__dict__)
        r._init_batch()
        r._primary, r._replicas = self, [r]
        r._threads = [threading.Thread(target=r._loop, name=f"lam-embedded-worker-{i}", daemon=True)]
        r._threads[0].start()
        r._started.wait()
        return r

    def _resolve_replicas(self, replicas: int | str, prefill_thread: str) -> int:
        """'auto': on a CPU with one torch thread, one replica per usable core, keeping at least 16 rows each."""
        possible = self._slab and self.device.type == "cpu"
        if replicas == "auto":
            if not possible or prefill_thread == "on" or torch.get_num_threads() != 1:
                return 1
            return max(1, min(usable_cpus(), self.max_batch_size // 16))
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
        if n > self.max_batch_size:
            raise ValueError(f"replicas ({n}) cannot exceed max_batch_size ({self.max_batch_size})")
        return n

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

    def _resolve_prefill_thread(self, mode: str) -> bool:
        """'auto': overlap prefill with decode on a CPU when torch runs one thread and another core is free."""
        if mode not in PREFILL_THREAD_MODES:
            raise ValueError(f"prefill_thread must be one of {', '.join(PREFILL_THREAD_MODES)}; got {mode!r}")
        possible = self._slab and self.max_batch_size > 1 and self.device.type == "cpu"
        if mode == "on" and not possible:
            raise ValueError("prefill_thread 'on' needs a CPU device, max_batch_size > 1 and a model whose layers "
                             "are all full attention (slab KV cache)")
        # On a GPU both threads would queue on one device. With several intra-op threads the decode already has
        # the cores (two OpenMP teams would fight over them): auto only pairs two single-threaded workers.
        return mode == "on" or (mode == "auto" and possible and self.replicas == 1 and torch.get_num_threads() == 1
                                and usable_cpus() > 1)

    def _check_packed(self) -> bool:
        """Whether packed steps give this model's plain forward's logits: a 5-token prompt, then its decode step
        packed with two more prompts (one reusing the first's KV as a cached prefix), against each sequence run
        alone."""
        a, b, c = [3, 1, 4, 1, 5], [9, 2, 6], [3, 1, 4, 1, 7, 8, 2]
        try:
            plain = torch.stack([self.model(input_ids=torch.tensor([x], device=self.device), use_cache=False)
                                 .logits[0, -1].float() for x in (a + [5], b, c)])
            cache = self._empty_batch(2)
            _, mask, _ = self._packed_forward(cache, None, [], [], [(a, None, 0)])
            prefix = kv_cache.row_kv(cache, 0, mask[0].nonzero().squeeze(1)[:4])  # c starts with a[:4]
            logits, _, _ = self._packed_forward(cache, mask, [5], [5], [(b, None, 0), (c[4:], prefix, 4)])
        except Exception as exc:  # a model whose forward does not take packed sequences
            log.info("packed steps not used: %s", exc)
            return False
        ok = bool(torch.allclose(logits, plain, rtol=0.05, atol=0.05 * float(plain.abs().max()) + 1e-3))
        if not ok:
            log.info("packed steps not used: their logits differ from the model's plain forward")
        return ok

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
        return sum(len(r._rows) for r in self._replicas)

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

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker; queued and running requests fail with BackendClosedError."""
        for r in self._replicas[1:]:
            r.close(timeout)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout)
        for req in list(self._pending) + [r.req for r in self._rows] + [r.req for p in self._ready for r in p.rows]:
            fail(req, BackendClosedError("backend is shutting down"))
        self._pending.clear()
        self._ready.clear()

    # ---------------------------------------------------------------- worker thread
    def _loop(self) -> None:
        """The worker: joins prefilled rows, runs decode steps, retires finished rows."""
        try:
            # Here, not in __init__: a forward in the constructing thread gave that thread an OpenMP team of
            # its own, and the worker's multi-threaded decode steps ran 20-40% slower beside it.
            if self._primary is None:  # other replicas take the first one's decisions
                with torch.inference_mode():
                    if self._slab and self.device.type == "cpu":
                        self.skip_padding = self._use_slab_attention()
                    self.packed = self.skip_padding and self._packed_mode == "auto" and self._check_packed()
        finally:
            self._started.set()
        while True:
            with self._cv:
                while not self._closing and not self._rows and not self._ready and (
                        self.prefill_thread or not self._pending):
                    self._cv.wait()
                if self._closing:
                    return
                admitted = ([] if self.prefill_thread else
                            self._admit(self.max_prefill_tokens if self.packed else None))
                ready = list(self._ready)
                self._ready.clear()
            wall, cpu = time.perf_counter(), time.thread_time()
            joining = [r.req for p in ready for r in p.rows]
            try:
                with torch.inference_mode():
                    if admitted and not self.packed:
                        try:
                            ready = list(self._prefill(admitted))
                        except Exception as exc:
                            log.exception("prefill failed")  # the running batch is untouched: keep it
                            self._release(admitted, exc)
                    for p in ready:
                        self._join(p)
                    if ready:
                        self._retire()
                    if self.packed and (self._rows or admitted):  # one forward: the rows' next tokens and prompts
                        self._packed_step(admitted)
                        admitted = []
                        self._retire()
                    elif self._rows:
                        self._decode_step()
                        self._retire()
            except Exception as exc:  # a model failure must not kill the worker: fail the affected requests
                log.exception("generation step failed")
                lost = [r.req for r in self._rows] + admitted + joining
                self._rows, self._cache, self._mask, self._next = [], None, None, []
                with self._cv:  # every row admitted so far and not in the prefill thread is gone
                    self._slots = sum(len(p.rows) for p in self._ready) + self._prefilling
                    self._cv.notify_all()
                for req in lost:
                    fail(req, exc)
            self._account(wall, cpu)

    def _prefill_loop(self) -> None:
        """The prefill thread: admits requests while rows are free and prefills them beside the decode steps."""
        while True:
            with self._cv:
                while not self._closing and not self._admissible():
                    self._cv.wait()
                if self._closing:
                    return
                admitted = self._admit()
                self._prefilling = sum(q.params.n for q in admitted)
            if not admitted:
                continue
            wall, cpu = time.perf_counter(), time.thread_time()
            handed: set[int] = set()
            try:
                with torch.inference_mode():
                    for group in self._prefill(admitted):  # each group joins as soon as it is ready
                        with self._cv:
                            self._ready.append(group)
                            self._prefilling -= len(group.rows)
                            self._cv.notify_all()
                        handed.update(id(r.req) for r in group.rows)
            except Exception as exc:
                log.exception("prefill failed")
                with self._cv:
                    self._prefilling = 0
                self._release([q for q in admitted if id(q) not in handed], exc)
            self._account(wall, cpu)

    def _account(self, wall: float, cpu: float) -> None:
        with self._stats_lock:
            self.stats["busy_s"] += time.perf_counter() - wall
            self.stats["busy_cpu_s"] += time.thread_time() - cpu

    def _release(self, reqs: list[Request], exc: Exception) -> None:
        """Fail requests that never joined the batch and free their rows."""
        with self._cv:
            self._slots -= sum(q.params.n for q in reqs)
            self._cv.notify_all()
        for req in reqs:
            fail(req, exc)

    def _admissible(self) -> bool:
        """Whether `_admit` would take the head of the queue now (under _cv)."""
        if not self._pending:
            return False
        head = self._pending[0]
        return head.cancelled or head.future.done() or head.params.n <= self.max_batch_size - self._slots

    def _admit(self, token_budget: int | None = None) -> list[Request]:
        """Take pending requests whose rows fit (under _cv), and with `token_budget`, whose prompt tokens fit in
        it (at least one request); new rows may only join a running batch if caches can merge."""
        if not self.prefill_thread and self._rows and not kv_cache.is_slab(self._cache):
            return []  # e.g. sliding-window caches: fall back to batching per round (never with a prefill thread)
        room, taken = self.max_batch_size - self._slots, []
        while self._pending:
            head = self._pending[0]
            cost = len(head.prompt_ids) * head.params.n
            if head.cancelled or head.future.done():
                self._pending.popleft()
            elif head.params.n <= room and (token_budget is None or not taken or cost <= token_budget):
                taken.append(self._pending.popleft())  # FIFO: a wide request is not overtaken by later ones
                room -= head.params.n
                token_budget = None if token_budget is None else token_budget - cost
            else:
                break
        self._slots += sum(q.params.n for q in taken)
        return taken

    @property
    def prefix_cache_hit_ratio(self) -> float:
        """Share of prompt tokens whose KV came from the prefix cache."""
        p = self._prefix
        return p.hit_tokens / p.lookup_tokens if p is not None and p.lookup_tokens else 0.0

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

    def _prefill(self, reqs: list[Request]) -> Iterator[_Prefilled]:
        """Prefill the admitted requests, reusing cached prefixes, in groups of similar new-token counts
        (yielded one by one, shortest first)."""
        hits = {}
        if self._prefix is not None:
            with self._prefix_lock:
                hits = {id(q): self._prefix.lookup(q.prompt_ids) for q in reqs}
        if not self._slab:
            yield self._prefill_group(reqs, hits)
            return
        new = {id(q): len(q.prompt_ids) - hits.get(id(q), (None, 0))[1] for q in reqs}
        # Prefill is compute-bound on CPU: padding every prompt to the longest one wasted a third of it.
        group: list[Request] = []
        for q in sorted(reqs, key=lambda q: new[id(q)]):  # ascending: q is the longest of its group
            grown = group + [q]
            padded = sum(g.params.n for g in grown) * new[id(q)]
            if group and sum(new[id(g)] * g.params.n for g in grown) < (1 - self._max_padding) * padded:
                yield self._prefill_group(group, hits)
                grown = [q]
            group = grown
        yield self._prefill_group(group, hits)

    def _prefill_group(self, reqs: list[Request], hits: dict) -> _Prefilled:
        """One forward over some prompts. Row i holds [pad][cached prefix m_i][pad][new tokens]."""
        rows = [Row(req, i) for req in reqs for i in range(req.params.n)]
        prefixes = [hits.get(id(r.req), (None, 0)) for r in rows]
        width = max(m for _, m in prefixes)  # cached columns
        news = [r.req.prompt_ids[m:] for r, (_, m) in zip(rows, prefixes)]
        span = max(len(t) for t in news)
        ids = torch.full((len(rows), span), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width + span), dtype=torch.long)
        for i, (new, (_, m)) in enumerate(zip(news, prefixes)):
            ids[i, span - len(new):] = torch.tensor(new, dtype=torch.long)
            mask[i, width - m:width] = 1
            mask[i, width + span - len(new):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, width:]
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        cache = (kv_cache.from_prefixes(self.model.config, [p for p, _ in prefixes], width, span) if width
                 else self._new_cache())
        self._observe(len(rows), "prefill")
        t0 = time.perf_counter()
        logits, cache = self._forward(ids, mask, positions, cache)
        tokens = sample(logits, rows, self._vocab)
        with self._stats_lock:
            self.stats["prefill_s"] += time.perf_counter() - t0
            self.stats["prefill_tokens"] += sum(len(t) for t in news)
            self.stats["prefill_padded_tokens"] += len(rows) * span
        for r, t in zip(rows, tokens):
            r.accept(t, self.eos_ids, self.decode)
        return _Prefilled(rows, cache, mask, tokens)

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

    def _packed_step(self, admitted: list[Request]) -> None:
        """The running rows' decode step and the admitted requests' prefill in one packed forward: the weights
        are read once for both, and no prompt is padded (worker thread)."""
        rows = self._rows
        new_rows = [Row(q, i) for q in admitted for i in range(q.params.n)]
        hits = {}
        if self._prefix is not None and admitted:
            with self._prefix_lock:
                hits = {id(q): self._prefix.lookup(q.prompt_ids) for q in admitted}
        prompts = []
        for r in new_rows:
            kv, m = hits.get(id(r.req), (None, 0))
            prompts.append((r.req.prompt_ids[m:], kv, m))
        if self._cache is None:
            self._cache = self._empty_batch(self.max_batch_size)
        t0 = time.perf_counter()
        snap = kv_cache.snapshot(self._cache) if rows and kv_cache.is_slab(self._cache) else None
        try:
            logits, mask, plan = self._packed_forward(self._cache, self._mask if rows else None, self._next,
                                                      [r.pos for r in rows], prompts)
        except Exception as exc:
            if not new_rows or snap is None:
                raise
            # The newcomers fail, not the running batch: back to the step before, and decode it alone.
            log.exception("packed step with new prompts failed; the running rows decode without them")
            kv_cache.rollback(self._cache, snap)
            self._release(admitted, exc)
            new_rows, prompts = [], []
            logits, mask, plan = self._packed_forward(self._cache, self._mask, self._next, [r.pos for r in rows],
                                                      [])
        tokens = sample(logits, rows + new_rows, self._vocab)
        elapsed = time.perf_counter() - t0
        if rows:
            self._observe(len(rows), "decode")
        if new_rows:
            self._observe(len(new_rows), "prefill")
        for r in rows:
            r.pos += 1
        with self._stats_lock:
            self.stats["decode_s" if rows else "prefill_s"] += elapsed
            new_tokens = sum(len(p[0]) for p in prompts)
            self.stats["prefill_tokens"] += new_tokens
            self.stats["prefill_padded_tokens"] += new_tokens  # packed: no padding
            if rows:
                self._count_kv(mask[:len(rows)], plan.blocks)
                (self._primary or self).joined_rows += len(new_rows)
        self._rows, self._mask, self._next = rows + new_rows, mask, tokens
        for r, t in zip(self._rows, tokens):
            r.accept(t, self.eos_ids, self.decode)

    def _join(self, p: _Prefilled) -> None:
        """Add prefilled rows to the running batch (worker thread)."""
        if self._slab:  # the batch's slab is allocated once and then reused
            if self._cache is None:
                self._cache = kv_cache.empty_batch(p.cache, self.max_batch_size, max(256, 2 * p.mask.shape[1]))
            with self._stats_lock:  # replicas count into the first one
                (self._primary or self).joined_rows += len(p.rows) if self._rows else 0
            self._cache, self._mask = kv_cache.merge(self._cache, self._mask if self._rows else None, p.cache,
                                                     p.mask)
            self._rows += p.rows
            self._next += p.tokens
        else:  # other caches cannot merge: _admit only lets requests in when no batch is running
            self._rows, self._cache, self._mask, self._next = p.rows, p.cache, p.mask, p.tokens

    def _decode_step(self) -> None:
        rows = self._rows
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        ids = torch.tensor(self._next, dtype=torch.long).unsqueeze(1).to(self.device)
        positions = torch.tensor([r.pos for r in rows], dtype=torch.long).unsqueeze(1).to(self.device)
        for r in rows:
            r.pos += 1
        extra, width, blocks = {}, self._mask.shape[1], [(0, len(rows), 0)]
        if self.skip_padding:  # attend per run of rows from the first column the run needs
            blocks = decode_attention.plan_blocks(decode_attention.first_columns(self._mask), width)
            extra["lam_blocks"] = blocks
        self._observe(len(rows), "decode")
        t0 = time.perf_counter()
        logits, self._cache = self._forward(ids, self._mask, positions, self._cache, **extra)
        self._next = sample(logits, rows, self._vocab)
        with self._stats_lock:
            self.stats["decode_s"] += time.perf_counter() - t0
            self._count_kv(self._mask, blocks)
        for r, t in zip(rows, self._next):
            r.accept(t, self.eos_ids, self.decode)

    def _count_kv(self, mask: torch.Tensor, blocks: list[tuple[int, int, int]]) -> None:
        """Stats of one decode step (under _stats_lock): its tokens and KV columns real, with every row's
        padding, and those attention read (runs of rows from their first column)."""
        self.stats["decode_tokens"] += mask.shape[0]
        self.stats["decode_kv_tokens"] += int(mask.sum())
        self.stats["decode_kv_padded_tokens"] += mask.numel()
        self.stats["decode_kv_read_tokens"] += sum((r1 - r0) * (mask.shape[1] - c0) for r0, r1, c0 in blocks)

    def _observe(self, rows: int, phase: str) -> None:
        owner = self._primary or self  # the backend the server and its metrics hold
        owner.max_batch_seen = max(owner.max_batch_seen, rows)
        if owner.on_batch is not None:
            owner.on_batch(rows, phase)

    def _retire(self) -> None:
        """Drop finished/cancelled rows from the batch and resolve requests whose rows are all done."""
        keep = []
        for i, r in enumerate(self._rows):
            req = r.req
            if req.cancelled:
                continue
            if not r.finish:
                keep.append(i)
                continue
            if r.reported:
                continue
            r.reported = True
            self._remember(i, r)
            req.choices[r.index] = Choice(r.index, r.text, r.out_ids, r.finish)
            req.completion_tokens += r.n_sampled
            if all(c is not None for c in req.choices) and not req.future.done():
                with self._stats_lock:  # replicas share the stats
                    self.stats["requests"] += 1
                req.future.set_result(GenerationResult(req.choices, len(req.prompt_ids), req.completion_tokens))
        if len(keep) == len(self._rows):
            return
        if not keep:
            if kv_cache.is_slab(self._cache):
                kv_cache.clear(self._cache)  # keep the buffers for the next batch
            else:
                self._cache = None
            self._free_rows(len(self._rows))
            self._rows, self._mask, self._next = [], None, []
            return
        if kv_cache.is_slab(self._cache):
            keep = kv_cache.keep_rows(self._cache, keep)  # moves only the last rows into the gaps
        else:
            try:
                self._cache.batch_select_indices(torch.tensor(keep, device=self.device))
            except Exception:  # no row selection: keep computing finished rows, ignore their output
                return
        self._free_rows(len(self._rows) - len(keep))
        self._rows = [self._rows[i] for i in keep]
        self._next = [self._next[i] for i in keep]
        self._mask = self._mask[keep]
        if kv_cache.is_slab(self._cache):  # drop left-padding columns no remaining row needs
            first = int(self._mask.any(dim=0).int().argmax())
            if first > 0:
                for layer in self._cache.layers:
                    layer.drop_left(first)
                self._mask = self._mask[:, first:]

    def _free_rows(self, n: int) -> None:
        with self._cv:  # rows left the batch: room for new requests
            self._slots -= n
            self._cv.notify_all()

    def _remember(self, i: int, r: Row) -> None:
        """Copy a finished row's KV (prompt + fed completion tokens, whole blocks) into the prefix cache."""
        if self._prefix is None or not kv_cache.is_slab(self._cache):
            return
        fed = r.req.prompt_ids + r.sampled[:-1]  # the last sampled token was never fed
        columns = self._mask[i].nonzero().squeeze(1)
        n = len(fed) // BLOCK * BLOCK
        if n and len(columns) == len(fed):
            kv = kv_cache.row_kv(self._cache, i, columns[:n])
            with self._prefix_lock:
                self._prefix.store(fed[:n], kv)
