"""A replica worker of the embedded engine: one running batch and the thread(s) that drive it.

    python -m pytest tests/serving/test_serving_backend.py -q -k "replicas or prefill_thread"

Each worker thread loops: admit pending requests from the engine's queue while its batch has rows free,
prefill them (serving/prefill.py), join them to the batch, run one decode step, retire finished rows
(serving/running_batch.py). With a prefill thread, a second thread admits and prefills beside the decode steps
and hands groups over ready to join (prefill and decode disaggregated, as DistServe or vLLM's disaggregated
prefill do across GPUs). Several replicas (on a CPU with one torch thread: one per core) decode batches side by
side, sharing the engine's model, queue, prefix cache and stats; a prompt joins whichever admits it first.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

import torch

from . import kv_cache
from .prefill import packed_step, prefill_groups
from .running_batch import Prefilled, RunningBatch
from .sequences import Request, fail

log = logging.getLogger(__name__)


class ReplicaWorker:
    def __init__(self, engine, index: int, on_start: Callable[[], None] | None = None):
        """`engine`: the EmbeddedBackend (serving/embedded.py) whose queue it serves; `on_start` runs in the
        worker thread before it serves (the engine's attention checks)."""
        self.engine = engine
        self.batch = RunningBatch(engine)
        self.ready: deque[Prefilled] = deque()  # prefilled by the prefill thread, not yet in the batch
        # Under the engine's condition: rows admitted and not retired (prefilling, ready or in the batch), and
        # rows the prefill thread is working on.
        self.slots = 0
        self.prefilling = 0
        self._on_start = on_start
        self._started = threading.Event()
        name = "lam-embedded-worker" + (f"-{index}" if index else "")
        self.threads = [threading.Thread(target=self._loop, name=name, daemon=True)]
        if engine.prefill_thread:
            self.threads.append(threading.Thread(target=self._prefill_loop, name="lam-embedded-prefill",
                                                 daemon=True))

    def start(self) -> None:
        for t in self.threads:
            t.start()
        self._started.wait()

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout)

    def unfinished(self) -> list[Request]:
        """Requests in the batch or prefilled for it (once the threads stopped)."""
        return [r.req for r in self.batch.rows] + [r.req for p in self.ready for r in p.rows]

    def _loop(self) -> None:
        """The worker: joins prefilled rows, runs decode steps, retires finished rows."""
        engine, batch, cv = self.engine, self.batch, self.engine._cv
        try:
            if self._on_start is not None:
                self._on_start()
        finally:
            self._started.set()
        while True:
            with cv:
                while not engine._closing and not batch.rows and not self.ready and (
                        engine.prefill_thread or not engine._pending or engine._paused):
                    cv.wait()
                if engine._closing:
                    return
                admitted = ([] if engine.prefill_thread else
                            self._admit(engine.max_prefill_tokens if engine.packed else None))
                ready = list(self.ready)
                self.ready.clear()
            wall, cpu = time.perf_counter(), time.thread_time()
            joining = [r.req for p in ready for r in p.rows]
            try:
                with torch.inference_mode():
                    if admitted and not engine.packed:
                        try:
                            ready = list(prefill_groups(engine, admitted))
                        except Exception as exc:
                            log.exception("prefill failed")  # the running batch is untouched: keep it
                            self._release(admitted, exc)
                    for p in ready:
                        batch.join(p)
                    if ready:
                        self._free(batch.retire())
                    if engine.packed and (batch.rows or admitted):  # one forward: the rows' next tokens and prompts
                        packed_step(engine, batch, admitted, self._release)
                        admitted = []
                        self._free(batch.retire())
                    elif batch.rows:
                        batch.decode_step()
                        self._free(batch.retire())
            except Exception as exc:  # a model failure must not kill the worker: fail the affected requests
                log.exception("generation step failed")
                lost = batch.drop() + admitted + joining
                with cv:  # every row admitted so far and not in the prefill thread is gone
                    self.slots = sum(len(p.rows) for p in self.ready) + self.prefilling
                    cv.notify_all()
                for req in lost:
                    fail(req, exc)
            self._account(wall, cpu)

    def _prefill_loop(self) -> None:
        """The prefill thread: admits requests while rows are free and prefills them beside the decode steps."""
        engine, cv = self.engine, self.engine._cv
        while True:
            with cv:
                while not engine._closing and not self._admissible():
                    cv.wait()
                if engine._closing:
                    return
                admitted = self._admit()
                self.prefilling = sum(q.params.n for q in admitted)
            if not admitted:
                continue
            wall, cpu = time.perf_counter(), time.thread_time()
            handed: set[int] = set()
            try:
                with torch.inference_mode():
                    for group in prefill_groups(engine, admitted):  # each group joins as soon as it is ready
                        with cv:
                            self.ready.append(group)
                            self.prefilling -= len(group.rows)
                            cv.notify_all()
                        handed.update(id(r.req) for r in group.rows)
            except Exception as exc:
                log.exception("prefill failed")
                with cv:
                    self.prefilling = 0
                self._release([q for q in admitted if id(q) not in handed], exc)
            self._account(wall, cpu)

    def _account(self, wall: float, cpu: float) -> None:
        self.engine._stats.add(busy_s=time.perf_counter() - wall, busy_cpu_s=time.thread_time() - cpu)

    def _free(self, rows: int) -> None:
        """Rows left the batch: room for new requests."""
        if rows:
            with self.engine._cv:
                self.slots -= rows
                self.engine._cv.notify_all()

    def _release(self, reqs: list[Request], exc: Exception) -> None:
        """Fail requests that never joined the batch and free their rows."""
        with self.engine._cv:
            self.slots -= sum(q.params.n for q in reqs)
            self.engine._cv.notify_all()
        for req in reqs:
            fail(req, exc)

    def _admissible(self) -> bool:
        """Whether `_admit` would take the head of the queue now (under the engine's condition)."""
        pending = self.engine._pending
        if not pending or self.engine._paused:
            return False
        head = pending[0]
        return head.cancelled or head.future.done() or head.params.n <= self.engine.max_batch_size - self.slots

    def _admit(self, token_budget: int | None = None) -> list[Request]:
        """Take pending requests whose rows fit (under the engine's condition), and with `token_budget`, whose
        prompt tokens fit in it (at least one request); new rows may only join a running batch if caches can
        merge."""
        engine, pending = self.engine, self.engine._pending
        if engine._paused:
            return []  # a weight update waits for the batch to drain (serving/weight_update.py)
        if not engine.prefill_thread and self.batch.rows and not kv_cache.is_slab(self.batch.cache):
            return []  # e.g. sliding-window caches: fall back to batching per round (never with a prefill thread)
        room, taken = engine.max_batch_size - self.slots, []
        while pending:
            head = pending[0]
            cost = len(head.prompt_ids) * head.params.n
            if head.cancelled or head.future.done():
                pending.popleft()
            elif head.params.n <= room and (token_budget is None or not taken or cost <= token_budget):
                taken.append(pending.popleft())  # FIFO: a wide request is not overtaken by later ones
                room -= head.params.n
                token_budget = None if token_budget is None else token_budget - cost
            else:
                break
        self.slots += sum(q.params.n for q in taken)
        return taken
