"""Embedded transformers backend: continuous batching of chat/completion requests on CPU (or one GPU).

    python -c "from serving.embedded import EmbeddedBackend, SamplingParams as P; b = EmbeddedBackend('MODEL_DIR'); \
print(b.generate_sync(b.encode(b.render_chat([{'role': 'user', 'content': 'hi'}])), P(temperature=0)))"

One worker thread owns the model. HTTP handlers `submit()` requests into a bounded queue; each worker
iteration admits pending requests (up to `max_batch_size` rows), prefills them as one left-padded batch,
merges their KV cache into the running batch (when the cache is a plain DynamicCache), and then runs one
decode step for every active row. Rows leave the batch as soon as they hit eos, a stop string or their
token budget, so short requests never wait for long ones.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import threading
from collections import deque
from concurrent.futures import Future
from typing import Callable

import torch

from .backend_api import (BackendClosedError, BackendError, Choice, EventCallback, GenerationResult,
                          PromptValidationError, QueueFullError, SamplingParams)

__all__ = ["EmbeddedBackend", "GenerationHandle", "SamplingParams", "GenerationResult", "Choice", "BackendError",
           "QueueFullError", "PromptValidationError", "BackendClosedError"]  # re-exported for callers

log = logging.getLogger(__name__)

class _Request:
    def __init__(self, prompt_ids, params, on_event, max_new):
        self.prompt_ids, self.params, self.on_event, self.max_new = prompt_ids, params, on_event, max_new
        self.future: Future = Future()
        self.cancelled = False
        self.choices: list[Choice | None] = [None] * params.n
        self.completion_tokens = 0


class GenerationHandle:
    """What `submit` returns: `.future` resolves to a GenerationResult; `.cancel()` frees the rows."""

    def __init__(self, req: _Request):
        self._req = req
        self.future: Future = req.future

    def cancel(self) -> None:
        self._req.cancelled = True  # the worker drops the rows at its next step
        self.future.cancel()


class _Row:
    """One sequence being generated (a request with n=3 has three rows)."""

    def __init__(self, req: _Request, index: int):
        self.req, self.index = req, index
        seed = req.params.seed
        self.gen = None if seed is None else torch.Generator().manual_seed((seed + index) % (2**63))
        self.out_ids: list[int] = []
        self.n_sampled = 0
        self.text = ""
        self.emitted = 0  # chars of `text` already sent to on_event
        self.pos = len(req.prompt_ids)  # position id of the next token fed to the model
        self.finish: str | None = None
        self.reported = False  # result copied into the request (a row may linger, see _retire)


class EmbeddedBackend:
    def __init__(self, model_dir: str, max_batch_size: int = 32, max_queue: int = 256,
                 num_threads: int | None = None, max_new_tokens_limit: int = 256):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.model_dir = model_dir
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.max_new_tokens_limit = max_new_tokens_limit
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.device = next(self.model.parameters()).device
        cfg = self.model.config.get_text_config()
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        self.max_context = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
                               or 2048)
        self.eos_ids = self._eos_ids()
        self.pad_id = next((i for i in (self.tokenizer.pad_token_id, *sorted(self.eos_ids), 0) if i is not None))
        params = inspect.signature(self.model.forward).parameters
        # transformers 5 renamed past_key_values -> cache; older/remote models still use the old name.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._pass_positions = "position_ids" in params
        self._logits_to_keep = "logits_to_keep" in params
        # Fast tokenizers mutate their Rust state on encode ("Already borrowed" under threads): serialize.
        self._tok_lock = threading.Lock()
        self._cv = threading.Condition()
        self._pending: deque[_Request] = deque()
        self._rows: list[_Row] = []
        self._cache = None
        self._mask: torch.Tensor | None = None  # (rows, kv_len) 1 = real token
        self._next: list[int] = []  # last sampled token per row = next decode input
        self._closing = False
        self.on_batch: Callable[[int, str], None] | None = None  # metrics hook: (rows, 'prefill'|'decode')
        self.max_batch_seen = 0  # largest forward batch so far (rows)
        self.joined_rows = 0  # rows that joined an already running batch (continuous batching)
        self._worker = threading.Thread(target=self._loop, name="lam-embedded-worker", daemon=True)
        self._worker.start()

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

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None, **template_kwargs) -> str:
        with self._tok_lock:
            return self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                      tokenize=False, **template_kwargs)

    def encode(self, text: str) -> list[int]:
        with self._tok_lock:
            return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        with self._tok_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # ---------------------------------------------------------------- submission (any thread)
    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def active_rows(self) -> int:
        return len(self._rows)

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
        room = self.max_context - len(prompt_ids)
        return min(params.max_tokens or self.max_new_tokens_limit, room)

    def submit(self, prompt_ids: list[int], params: SamplingParams, on_event: EventCallback | None = None,
               prompt_param: str = "messages") -> GenerationHandle:
        """Queue a request; raises PromptValidationError, QueueFullError or BackendClosedError."""
        max_new = self.validate(prompt_ids, params, prompt_param)
        params = dataclasses.replace(params, stop=[s for s in params.stop if s])  # "" would match everywhere
        req = _Request(list(prompt_ids), params, on_event, max_new)
        with self._cv:
            if self._closing:
                raise BackendClosedError("backend is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFullError()
            self._pending.append(req)
            self._cv.notify()
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
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._worker.join(timeout)
        for req in list(self._pending) + [r.req for r in self._rows]:
            _fail(req, BackendClosedError("backend is shutting down"))
        self._pending.clear()

    # ---------------------------------------------------------------- worker thread
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closing and not self._pending and not self._rows:
                    self._cv.wait()
                if self._closing:
                    return
                admitted = self._admit()
            try:
                with torch.inference_mode():
                    if admitted:
                        try:
                            self._prefill(admitted)
                        except Exception as exc:
                            if any(r.req in admitted for r in self._rows):
                                raise  # failed after joining the batch: state unknown, reset below
                            log.exception("prefill failed")  # the running batch is untouched: keep it
                            for req in admitted:
                                _fail(req, exc)
                        self._retire()
                    if self._rows:
                        self._decode_step()
                        self._retire()
            except Exception as exc:  # a model failure must not kill the worker: fail the affected requests
                log.exception("generation step failed")
                for req in [r.req for r in self._rows] + admitted:
                    _fail(req, exc)
                self._rows, self._cache, self._mask, self._next = [], None, None, []

    def _admit(self) -> list[_Request]:
        """Take pending requests whose rows fit; new rows may only join a running batch if caches can merge."""
        if self._rows and not _mergeable(self._cache):
            return []  # e.g. sliding-window caches: fall back to batching per round
        room, taken = self.max_batch_size - len(self._rows), []
        while self._pending:
            head = self._pending[0]
            if head.cancelled or head.future.done():
                self._pending.popleft()
            elif head.params.n <= room:  # FIFO: a wide request is not overtaken by later ones
                taken.append(self._pending.popleft())
                room -= head.params.n
            else:
                break
        return taken

    def _forward(self, input_ids, mask, positions, cache):
        kwargs = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device),
                  "use_cache": True, self._cache_kw: cache}
        if self._pass_positions:  # left padding: each row counts positions from its own first real token
            kwargs["position_ids"] = positions.to(self.device)
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1  # only the last position is needed: saves the vocab projection
        out = self.model(**kwargs)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return out.logits[:, -1, :].float(), new_cache

    def _new_cache(self):
        try:
            from transformers import DynamicCache
            return DynamicCache(config=self.model.config)
        except Exception:  # unusual model/config: let the model build its own cache
            return None

    def _prefill(self, reqs: list[_Request]) -> None:
        rows = [_Row(req, i) for req in reqs for i in range(req.params.n)]
        width = max(len(r.req.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            p = r.req.prompt_ids
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self._observe(len(rows), "prefill")
        logits, cache = self._forward(ids, mask, positions, self._new_cache())
        tokens = self._sample(logits, rows)
        if self._rows:  # join the running batch (only reached when both caches are mergeable)
            self._cache, self._mask = _merge(self._cache, self._mask, cache, mask)
            self.joined_rows += len(rows)
            self._rows += rows
            self._next += tokens
        else:
            self._rows, self._cache, self._mask, self._next = rows, cache, mask, tokens
        for r, t in zip(rows, tokens):
            self._accept(r, t)

    def _decode_step(self) -> None:
        rows = self._rows
        self._mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
        ids = torch.tensor(self._next, dtype=torch.long).unsqueeze(1)
        positions = torch.tensor([r.pos for r in rows], dtype=torch.long).unsqueeze(1)
        self._observe(len(rows), "decode")
        logits, self._cache = self._forward(ids, self._mask, positions, self._cache)
        self._next = self._sample(logits, rows)
        for r, t in zip(rows, self._next):
            self._accept(r, t)

    def _observe(self, rows: int, phase: str) -> None:
        self.max_batch_seen = max(self.max_batch_seen, rows)
        if self.on_batch is not None:
            self.on_batch(rows, phase)

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        out = logits.argmax(dim=-1).tolist()  # greedy for every row; sampled rows overwrite below
        for i, r in enumerate(rows):
            p = r.req.params
            if r.finish or p.temperature < 1e-5:  # tiny temperatures overflow the softmax: same as greedy
                continue
            probs = torch.softmax(logits[i].double() / p.temperature, dim=-1)
            if p.top_p < 1.0:  # nucleus: smallest prefix of sorted tokens whose mass reaches top_p
                probs, idx = probs.sort(descending=True)
                drop = (probs.cumsum(0) - probs) >= p.top_p
                drop[0] = False  # the top token always survives, however small top_p is
                probs[drop] = 0.0
            else:
                idx = None
            if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
                continue  # degenerate logits: keep greedy rather than fail the whole batch
            k = int(torch.multinomial(probs, 1, generator=r.gen))
            out[i] = int(idx[k]) if idx is not None else k
        return out

    def _accept(self, r: _Row, token: int) -> None:
        """Append a sampled token to a row, then check eos / stop strings / budget and stream the new text."""
        if r.finish:
            return
        r.n_sampled += 1
        r.pos += 1
        if token in self.eos_ids:
            r.finish = "stop"
        else:
            r.out_ids.append(token)
            r.text = self.decode(r.out_ids)
            last = r.n_sampled >= r.req.max_new
            # A trailing U+FFFD is an incomplete UTF-8 char the next token may complete: never match or emit it.
            stable = r.text if last else r.text.rstrip("\ufffd")
            cut = min((i for i in (stable.find(s) for s in r.req.params.stop) if i >= 0), default=-1)
            if cut >= 0:
                r.text, r.finish = r.text[:cut], "stop"
            elif last:
                r.finish = "length"
        if r.finish:
            end = len(r.text)
        else:  # also hold back what could be the start of a stop string
            end = len(stable) - (max((len(s) for s in r.req.params.stop), default=1) - 1)
        if r.req.on_event is not None and (end > r.emitted or r.finish):
            try:
                r.req.on_event(r.index, r.text[r.emitted:end] if end > r.emitted else "", r.finish)
            except Exception:  # a broken stream consumer must not break the batch
                log.exception("on_event callback failed")
        r.emitted = max(r.emitted, end)

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
            req.choices[r.index] = Choice(r.index, r.text, r.out_ids, r.finish)
            req.completion_tokens += r.n_sampled
            if all(c is not None for c in req.choices) and not req.future.done():
                req.future.set_result(GenerationResult(req.choices, len(req.prompt_ids), req.completion_tokens))
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache, self._mask, self._next = [], None, None, []
            return
        try:
            self._cache.batch_select_indices(torch.tensor(keep, device=self.device))
        except Exception:  # cache type without row selection: keep computing finished rows, ignore their output
            return
        self._rows = [self._rows[i] for i in keep]
        self._next = [self._next[i] for i in keep]
        self._mask = self._mask[keep]
        if _mergeable(self._cache):  # drop left-padding columns no remaining row needs
            first = int(self._mask.any(dim=0).int().argmax())
            if first > 0:
                for layer in self._cache.layers:
                    layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
                self._mask = self._mask[:, first:]


def _fail(req: _Request, exc: Exception) -> None:
    if not req.future.done():
        req.future.set_exception(exc)


def _mergeable(cache) -> bool:
    """Only plain DynamicLayer caches ([batch, heads, seq, dim] tensors) can be padded and concatenated."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return (isinstance(cache, DynamicCache) and len(cache.layers) > 0
            and all(type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers))


def _merge(cache_a, mask_a: torch.Tensor, cache_b, mask_b: torch.Tensor):
    """Concatenate two batches along the batch dim, left-padding the shorter KV history with masked zeros."""
    width = max(mask_a.shape[1], mask_b.shape[1])

    def lpad(t: torch.Tensor, dim: int) -> torch.Tensor:
        missing = width - t.shape[dim]
        if missing == 0:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    for la, lb in zip(cache_a.layers, cache_b.layers):
        la.keys = torch.cat([lpad(la.keys, -2), lpad(lb.keys, -2)], dim=0)
        la.values = torch.cat([lpad(la.values, -2), lpad(lb.values, -2)], dim=0)
    return cache_a, torch.cat([lpad(mask_a, 1), lpad(mask_b, 1)], dim=0)
