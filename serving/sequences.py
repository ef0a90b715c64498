"""Sequences in the embedded backend's batch: requests, their rows, sampling, eos / stop strings, streaming.

    python -c "from serving.sequences import Row; help(Row.accept)"

A request with n choices is n rows. The worker (serving/replica.py) samples one token per row per forward
pass with `sample`, hands it to `Row.accept`, and retires rows whose `finish` is set.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Callable

import torch

from .backend_api import Choice, EventCallback, SamplingParams
from .grammar import Vocab, pick_token

log = logging.getLogger(__name__)


class Request:
    def __init__(self, prompt_ids: list[int], params: SamplingParams, on_event: EventCallback | None,
                 max_new: int):
        self.prompt_ids, self.params, self.on_event, self.max_new = prompt_ids, params, on_event, max_new
        self.future: Future = Future()
        self.cancelled = False
        self.choices: list[Choice | None] = [None] * params.n
        self.completion_tokens = 0


class GenerationHandle:
    """What `submit` returns: `.future` resolves to a GenerationResult; `.cancel()` frees the rows."""

    def __init__(self, req: Request):
        self._req = req
        self.future: Future = req.future

    def cancel(self) -> None:
        self._req.cancelled = True  # the worker drops the rows at its next step
        self.future.cancel()


def fail(req: Request, exc: Exception) -> None:
    if not req.future.done():
        req.future.set_exception(exc)


class Row:
    """One sequence being generated (a request with n=3 has three rows)."""

    def __init__(self, req: Request, index: int):
        self.req, self.index = req, index
        seed = req.params.seed
        self.gen = None if seed is None else torch.Generator().manual_seed((seed + index) % (2**63))
        self.out_ids: list[int] = []  # sampled tokens without eos
        self.sampled: list[int] = []  # every sampled token: all but the last were fed to the model
        self.n_sampled = 0
        self.text = ""
        self.emitted = 0  # chars of `text` already sent to on_event
        self.pos = len(req.prompt_ids)  # position id of the next token fed to the model
        self.finish: str | None = None
        self.reported = False  # result copied into the request (a row may linger, see RunningBatch.retire)
        self.grammar = req.params.grammar  # state of the shape the output must keep (serving/grammar.py)
        self.grammar_text = ""  # decode(out_ids), kept by `sample` for constrained rows

    def accept(self, token: int, eos_ids: set[int], decode: Callable[[list[int]], str]) -> None:
        """Append a sampled token, then check eos / stop strings / budget and stream the new text."""
        if self.finish:
            return
        self.n_sampled += 1
        self.sampled.append(token)
        stops = self.req.params.stop
        if not stops and self.req.on_event is None:  # nobody reads the text before the end: decode it once
            if token in eos_ids:
                self.finish = "stop"
            else:
                self.out_ids.append(token)
                if self.n_sampled >= self.req.max_new:
                    self.finish = "length"
            if self.finish:
                self.text = decode(self.out_ids)
            return
        if token in eos_ids:
            self.finish = "stop"
        else:
            self.out_ids.append(token)
            self.text = decode(self.out_ids)
            last = self.n_sampled >= self.req.max_new
            # A trailing U+FFFD is an incomplete UTF-8 char the next token may complete: never match or emit it.
            stable = self.text if last else self.text.rstrip("\ufffd")
            cut = min((i for i in (stable.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                self.text, self.finish = self.text[:cut], "stop"
            elif last:
                self.finish = "length"
        if self.finish:
            end = len(self.text)
        else:  # also hold back what could be the start of a stop string
            end = len(stable) - (max((len(s) for s in stops), default=1) - 1)
        if self.req.on_event is not None and (end > self.emitted or self.finish):
            try:
                self.req.on_event(self.index, self.text[self.emitted:end] if end > self.emitted else "", self.finish)
            except Exception:  # a broken stream consumer must not break the batch
                log.exception("on_event callback failed")
        self.emitted = max(self.emitted, end)


def sample(logits: torch.Tensor, rows: list[Row], vocab: Vocab | None = None) -> list[int]:
    """One token per row from [rows, vocab] logits: greedy, or seeded temperature / top-p sampling; rows with
    a grammar then keep the sampled token only if it keeps their output in shape (the most likely one that does
    otherwise)."""
    out = _sample(logits, rows)
    for i, r in enumerate(rows):
        if r.grammar is not None and not r.finish and vocab is not None:
            out[i], r.grammar, r.grammar_text = pick_token(
                r.grammar, r.grammar_text, r.out_ids, r.req.max_new - r.n_sampled, out[i],
                lambda i=i: logits[i].argsort(descending=True).tolist(), vocab)
    return out


def _sample(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    out = logits.argmax(dim=-1).tolist()  # greedy for every row; sampled rows overwrite below
    for i, r in enumerate(rows):
        p = r.req.params
        if r.finish or p.temperature < 1e-5:  # tiny temperatures overflow the softmax: same as greedy
            continue
        # float64 on the CPU: the row's torch.Generator lives there, and tiny probabilities stay exact
        probs = torch.softmax(logits[i].double().cpu() / p.temperature, dim=-1)
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
