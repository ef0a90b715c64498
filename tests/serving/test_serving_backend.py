"""EmbeddedBackend: batched greedy == solo greedy, continuous joins, sampling, stops, limits, failures.

    .venv/bin/python -m pytest tests/serving/test_serving_backend.py -q
"""
from __future__ import annotations

import threading
import time

import pytest
import torch
from serving_tiny_model import chat_prompt, patch_replicas

from serving.embedded import (BackendClosedError, EmbeddedBackend, PromptValidationError, QueueFullError,
                              SamplingParams)
from serving.engine_options import usable_cpus

GREEDY = dict(temperature=0.0)


def _prompts(backend, k: int) -> list[list[int]]:
    # Different lengths on purpose: rows get different amounts of left padding.
    return [chat_prompt(backend, "move " * (i % 6) + f"task {i}") for i in range(k)]


def _solo(backend, prompts, max_tokens):
    return [backend.generate_sync(p, SamplingParams(max_tokens=max_tokens, **GREEDY), timeout=60) for p in prompts]


def test_batched_greedy_equals_solo(any_backend):
    backend = any_backend
    prompts = _prompts(backend, 8)
    solo = _solo(backend, prompts, 24)
    backend.max_batch_seen = 0
    handles = [backend.submit(p, SamplingParams(max_tokens=24, **GREEDY)) for p in prompts]
    batched = [h.future.result(60) for h in handles]
    assert backend.max_batch_seen > 1, "requests submitted together must share forward passes"
    for s, b in zip(solo, batched):
        assert b.choices[0].token_ids == s.choices[0].token_ids
        assert b.choices[0].text == s.choices[0].text
        assert b.prompt_tokens == s.prompt_tokens


def test_rows_joining_a_running_batch_keep_greedy_outputs(any_backend):
    backend = any_backend
    prompts = _prompts(backend, 6)
    solo = _solo(backend, prompts, 40)
    joined_before = backend.joined_rows
    handles = []
    for p in prompts:  # staggered: later rows join while earlier ones are mid-decode
        handles.append(backend.submit(p, SamplingParams(max_tokens=40, **GREEDY)))
        time.sleep(0.01)
    for h, s in zip(handles, solo):
        assert h.future.result(60).choices[0].token_ids == s.choices[0].token_ids
    assert backend.joined_rows > joined_before, "no request joined a running batch"


def test_seeded_sampling_is_reproducible_and_n_gives_distinct_choices(backend):
    p = chat_prompt(backend, "hello")
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, seed=1234, n=3)
    a, b = backend.generate_sync(p, params, 60), backend.generate_sync(p, params, 60)
    assert [c.token_ids for c in a.choices] == [c.token_ids for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in a.choices}) > 1
    assert a.completion_tokens == sum(len(c.token_ids) for c in a.choices)  # all 'length': no eos counted


def test_tiny_top_p_is_greedy(backend):
    p = chat_prompt(backend, "top p")
    greedy = backend.generate_sync(p, SamplingParams(max_tokens=12, **GREEDY), 60)
    nucleus = backend.generate_sync(p, SamplingParams(max_tokens=12, temperature=1.0, top_p=1e-6, seed=7), 60)
    assert nucleus.choices[0].token_ids == greedy.choices[0].token_ids


def test_stop_string_and_length(backend, monkeypatch):
    monkeypatch.setattr(backend, "eos_ids", set())  # the random model must not end the text early
    p = chat_prompt(backend, "stop here")
    full = backend.generate_sync(p, SamplingParams(max_tokens=30, **GREEDY), 60).choices[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 30
    text = full.text
    stop = next(text[i:i + 2] for i in range(3, len(text) - 2) if "\ufffd" not in text[i:i + 2] and
                text[i:i + 2].strip())
    got = backend.generate_sync(p, SamplingParams(max_tokens=30, stop=[stop], **GREEDY), 60).choices[0]
    assert got.finish_reason == "stop"
    assert got.text == text[:text.find(stop)]


def test_eos_finishes_with_stop(backend):
    p = chat_prompt(backend, "eos")
    first = backend.generate_sync(p, SamplingParams(max_tokens=1, **GREEDY), 60).choices[0].token_ids[0]
    saved = backend.eos_ids
    backend.eos_ids = saved | {first}  # pretend the first greedy token is eos
    try:
        res = backend.generate_sync(p, SamplingParams(max_tokens=10, **GREEDY), 60)
    finally:
        backend.eos_ids = saved
    assert res.choices[0].finish_reason == "stop" and res.choices[0].text == ""
    assert res.completion_tokens == 1


def test_text_without_stops_or_streaming_is_decoded_once_at_the_end(backend):
    p = chat_prompt(backend, "text at the end")
    whole = backend.generate_sync(p, SamplingParams(max_tokens=8, **GREEDY), 60).choices[0]
    assert whole.finish_reason == "length" and len(whole.token_ids) == 8
    assert whole.text and whole.text == backend.decode(whole.token_ids)
    cut = next(i for i in range(1, 8) if whole.token_ids[i] not in whole.token_ids[:i])
    saved = backend.eos_ids
    backend.eos_ids = saved | {whole.token_ids[cut]}  # eos after `cut` tokens
    try:
        early = backend.generate_sync(p, SamplingParams(max_tokens=8, **GREEDY), 60).choices[0]
    finally:
        backend.eos_ids = saved
    assert early.finish_reason == "stop" and early.token_ids == whole.token_ids[:cut]
    assert early.text == backend.decode(whole.token_ids[:cut])


def test_validation_errors_name_the_field(backend):
    with pytest.raises(PromptValidationError) as e:
        backend.submit(list(range(5, 5 + backend.max_context)), SamplingParams())
    assert e.value.param == "messages"
    with pytest.raises(PromptValidationError) as e:
        backend.submit([5, 6], SamplingParams(max_tokens=backend.max_new_tokens_limit + 1))
    assert e.value.param == "max_tokens"
    with pytest.raises(PromptValidationError) as e:
        backend.submit([], SamplingParams(), prompt_param="prompt")
    assert e.value.param == "prompt"


def test_budget_is_capped_by_context(backend):
    p = list(range(10, 10 + backend.max_context - 3))
    res = backend.generate_sync(p, SamplingParams(max_tokens=50, **GREEDY), 60)
    assert res.choices[0].finish_reason in ("length", "stop") and res.completion_tokens <= 3


def test_worker_survives_a_model_failure(any_backend, monkeypatch):
    backend = any_backend
    p = chat_prompt(backend, "boom")

    def broken(*a, **k):
        raise RuntimeError("simulated model failure")

    patch_replicas(monkeypatch, backend, "_forward", broken)
    if backend.packed:
        patch_replicas(monkeypatch, backend, "_packed_forward", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        backend.generate_sync(p, SamplingParams(max_tokens=4), 30)
    monkeypatch.undo()
    assert backend.generate_sync(p, SamplingParams(max_tokens=4, **GREEDY), 30).completion_tokens == 4


def test_queue_full_and_cancel(tiny_model_dir):
    b = EmbeddedBackend(tiny_model_dir, max_batch_size=1, max_queue=1, num_threads=1)
    try:
        p = chat_prompt(b, "long")
        running = b.submit(p, SamplingParams(max_tokens=200, **GREEDY))
        deadline = time.monotonic() + 10
        while b.active_rows == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        queued = b.submit(p, SamplingParams(max_tokens=2, **GREEDY))  # waits: the only row is busy
        with pytest.raises(QueueFullError):
            b.submit(p, SamplingParams(max_tokens=2))
        running.cancel()
        assert queued.future.result(30).completion_tokens == 2
        assert running.future.cancelled()
    finally:
        b.close()


def test_failed_prefill_of_a_newcomer_spares_the_running_batch(any_backend, monkeypatch):
    backend = any_backend
    p_long, p_new = chat_prompt(backend, "long runner"), chat_prompt(backend, "newcomer")
    patch_replicas(monkeypatch, backend, "eos_ids", set())  # the runner must really run 120 steps
    expected = _solo(backend, [p_long], 120)[0].choices[0].token_ids
    if backend.packed:  # the newcomer's prompt is packed into a decode step of the runner: fail mid-forward,
        import serving.decode_attention as da  # after its rows were added and some layers wrote their KV

        attention, calls = da.packed_attention, []

        def fail_prefills(plan, *a):  # (with replicas the newcomer may start a batch of its own)
            if plan.prompts and backend.active_rows:
                calls.append(1)
                if len(calls) == 2:
                    raise RuntimeError("simulated prefill failure")
            return attention(plan, *a)

        monkeypatch.setattr(da, "packed_attention", fail_prefills)
    if backend.prefill_thread or not backend.packed:  # a prefill forward of its own
        forward = backend._forward

        def fail_prefill(ids, *a, **kw):
            if ids.shape[1] > 1 and backend.active_rows:  # prefill while another request is running
                raise RuntimeError("simulated prefill failure")
            return forward(ids, *a, **kw)

        patch_replicas(monkeypatch, backend, "_forward", fail_prefill)
    running = backend.submit(p_long, SamplingParams(max_tokens=120, **GREEDY))
    deadline = time.monotonic() + 10
    while backend.active_rows == 0 and time.monotonic() < deadline:
        time.sleep(0.002)
    with pytest.raises(RuntimeError, match="simulated prefill"):
        backend.submit(p_new, SamplingParams(max_tokens=4)).future.result(30)
    assert running.future.result(30).choices[0].token_ids == expected


def _forward_log(backend, monkeypatch) -> list:
    """Wrap the model call: (phase, start, end) of every forward pass, from whichever thread ran it."""
    log, forward = [], backend._forward

    def logged(ids, *a, **kw):
        t0 = time.perf_counter()
        out = forward(ids, *a, **kw)
        log.append(("prefill" if ids.shape[1] > 1 else "decode", t0, time.perf_counter()))
        return out

    monkeypatch.setattr(backend, "_forward", logged)
    return log


@pytest.mark.parametrize("mode", ["prefill-thread", "sync"])
def test_prefill_thread_overlaps_prefill_with_decode(mode, backend, sync_backend, monkeypatch):
    b = backend if mode == "prefill-thread" else sync_backend
    monkeypatch.setattr(b, "eos_ids", set())  # every row runs its full budget
    log = _forward_log(b, monkeypatch)
    handles = []
    for i in range(12):  # newcomers arrive while earlier rows decode
        handles.append(b.submit(chat_prompt(b, "overlap " * (i % 4) + str(i)), SamplingParams(max_tokens=30, **GREEDY)))
        time.sleep(0.01)
    assert all(h.future.result(60).completion_tokens == 30 for h in handles)
    prefills = [(s, e) for p, s, e in log if p == "prefill"]
    decodes = [(s, e) for p, s, e in log if p == "decode"]
    overlapping = sum(any(s < de and ds < e for ds, de in decodes) for s, e in prefills)
    if mode == "sync":
        assert overlapping == 0, "one worker thread: a prefill never runs during a decode step"
    else:
        assert overlapping >= 1, f"no prefill ran beside a decode step ({len(prefills)} prefills)"


def test_prefill_thread_respects_the_batch_limit_and_frees_every_row(tiny_model_dir):
    b = EmbeddedBackend(tiny_model_dir, max_batch_size=4, num_threads=1, prefill_thread="on")
    try:
        prompts = _prompts(b, 10)
        handles = [b.submit(p, SamplingParams(max_tokens=12, n=1 + i % 2, temperature=0.8, seed=i))
                   for i, p in enumerate(prompts)]
        handles[3].cancel()  # a cancelled request gives its rows back too
        results = [h.future.result(60) for i, h in enumerate(handles) if i != 3]
        assert [len(r.choices) for r in results] == [1 + i % 2 for i in range(10) if i != 3]
        assert 1 < b.max_batch_seen <= 4
        deadline = time.monotonic() + 10
        while (b.workers[0].slots or b.active_rows) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.workers[0].slots == 0 and b.active_rows == 0 and b.queue_depth == 0
    finally:
        b.close()


def test_prefill_thread_mode_is_checked(tiny_model_dir):
    with pytest.raises(ValueError, match="prefill_thread must be one of auto, on, off"):
        EmbeddedBackend(tiny_model_dir, num_threads=1, prefill_thread="sometimes")
    with pytest.raises(ValueError, match="max_batch_size > 1"):
        EmbeddedBackend(tiny_model_dir, max_batch_size=1, num_threads=1, prefill_thread="on")
    b = EmbeddedBackend(tiny_model_dir, max_batch_size=1, num_threads=1)  # auto: nothing to overlap with
    try:
        assert b.prefill_thread is False and len(b.workers[0].threads) == 1
    finally:
        b.close()
    threads = torch.get_num_threads()
    try:
        for num_threads, expected in ((1, usable_cpus() > 1), (2, False)):  # auto pairs single-threaded workers
            b = EmbeddedBackend(tiny_model_dir, max_batch_size=4, num_threads=num_threads)
            b.close()
            assert b.prefill_thread is expected and len(b.workers[0].threads) == 1 + expected, num_threads
    finally:
        torch.set_num_threads(threads)


def test_close_with_requests_in_the_prefill_thread_fails_them_all(tiny_model_dir, monkeypatch):
    b = EmbeddedBackend(tiny_model_dir, max_batch_size=8, num_threads=1, prefill_thread="on")
    forward = b._forward
    monkeypatch.setattr(b, "_forward", lambda *a: (time.sleep(0.05), forward(*a))[1])  # slow enough to catch
    handles = [b.submit(p, SamplingParams(max_tokens=200, **GREEDY)) for p in _prompts(b, 12)]  # 4 stay queued
    deadline = time.monotonic() + 10
    while not (b.workers[0].prefilling or b.active_rows) and time.monotonic() < deadline:
        time.sleep(0.005)
    b.close(timeout=10)
    assert not any(t.is_alive() for t in b.workers[0].threads)
    for h in handles:  # every request is answered: none is left waiting on a thread that is gone
        with pytest.raises(Exception) as e:
            h.future.result(5)
        assert "shutting down" in str(e.value)


def test_packed_steps_keep_outputs_and_admit_within_the_token_budget(tiny_model_dir, monkeypatch):
    b = EmbeddedBackend(tiny_model_dir, max_batch_size=8, num_threads=1, prefill_thread="off",
                        max_prefill_tokens=20)
    try:
        assert b.packed and not b.prefill_thread
        prompts = _prompts(b, 8)
        assert all(len(p) < 20 for p in prompts) and sum(len(p) for p in prompts[:3]) > 20
        solo = _solo(b, prompts, 20)
        steps, packed = [], b._packed_forward

        def spy(cache, mask, tokens, positions, prompts):
            steps.append((len(tokens), [len(p[0]) + p[2] for p in prompts]))
            return packed(cache, mask, tokens, positions, prompts)

        monkeypatch.setattr(b, "_packed_forward", spy)
        handles = []
        for p in prompts:  # staggered: later prompts are packed into the running rows' decode steps
            handles.append(b.submit(p, SamplingParams(max_tokens=20, **GREEDY)))
            time.sleep(0.005)
        for h, s in zip(handles, solo):
            assert h.future.result(60).choices[0].token_ids == s.choices[0].token_ids
        with_prompts = [lens for _, lens in steps if lens]
        assert sum(len(lens) for lens in with_prompts) == 8
        assert all(sum(lens) <= 20 or len(lens) == 1 for lens in with_prompts), with_prompts
        assert any(n and lens for n, lens in steps), "no prompt joined a decoding batch in the same forward"
        assert b.stats["prefill_padded_tokens"] == b.stats["prefill_tokens"]  # packed: no prompt is padded
        wide = b.submit(prompts[0], SamplingParams(max_tokens=20, n=3, **GREEDY)).future.result(60)
        assert [c.token_ids for c in wide.choices] == [solo[0].choices[0].token_ids] * 3  # n rows, one prompt
    finally:
        b.close()


def test_packed_steps_are_off_when_they_would_change_the_logits(tiny_model_dir, monkeypatch):
    import serving.decode_attention as da

    monkeypatch.setattr(da, "packed_attention", lambda plan, q, k, v, *a: torch.zeros(
        1, q.shape[2], q.shape[1], q.shape[3], dtype=q.dtype))  # a model whose packed forward is wrong
    b = EmbeddedBackend(tiny_model_dir, max_batch_size=4, num_threads=1, prefill_thread="off")
    try:
        assert not b.packed and b.skip_padding
        p = chat_prompt(b, "still served")
        assert b.generate_sync(p, SamplingParams(max_tokens=5, **GREEDY), 30).completion_tokens == 5
    finally:
        b.close()
    with pytest.raises(ValueError, match="packed_prefill must be one of auto, off"):
        EmbeddedBackend(tiny_model_dir, num_threads=1, packed_prefill="on")
    with pytest.raises(ValueError, match="max_prefill_tokens must be at least 1"):
        EmbeddedBackend(tiny_model_dir, num_threads=1, max_prefill_tokens=0)


def test_replicas_decode_side_by_side_and_share_the_queue(tiny_model_dir, monkeypatch):
    b = EmbeddedBackend(tiny_model_dir, max_batch_size=8, num_threads=1, replicas=2)
    try:
        assert b.replicas == 2 and b.max_batch_size == 4 and not b.prefill_thread
        assert [t.name for r in b.workers for t in r.threads] == ["lam-embedded-worker", "lam-embedded-worker-1"]
        prompts = _prompts(b, 8)
        solo = _solo(b, prompts, 30)
        seen, packed = [], b._packed_forward

        def spy(*a):
            seen.append((threading.current_thread().name, len(a[2])))
            return packed(*a)

        patch_replicas(monkeypatch, b, "_packed_forward", spy)
        handles = [b.submit(p, SamplingParams(max_tokens=30, **GREEDY)) for p in prompts]
        for h, s in zip(handles, solo):
            assert h.future.result(60).choices[0].token_ids == s.choices[0].token_ids
        by_worker = {name: max(rows for n, rows in seen if n == name) for name, _ in seen}
        assert len(by_worker) == 2, by_worker  # both replicas ran batches ...
        assert all(rows <= 4 for rows in by_worker.values())  # ... of at most their share of the rows
        assert b.max_batch_seen > 1 and b.stats["requests"] >= 16
        # close() fails what is queued or running in every replica
        handles = [b.submit(p, SamplingParams(max_tokens=200, **GREEDY)) for p in prompts + prompts]
        deadline = time.monotonic() + 10
        while b.active_rows < 8 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert all(len(r.batch.rows) == 4 for r in b.workers)
    finally:
        b.close()
    for h in handles:
        with pytest.raises(BackendClosedError):
            h.future.result(10)


def test_replicas_setting_is_checked(tiny_model_dir):
    for bad, match in (("two", "replicas must be 'auto' or a positive integer"), (0, "positive integer"),
                       (9, r"replicas \(9\) cannot exceed max_batch_size \(8\)")):
        with pytest.raises(ValueError, match=match):
            EmbeddedBackend(tiny_model_dir, max_batch_size=8, num_threads=1, replicas=bad)
    with pytest.raises(ValueError, match="cannot be combined"):
        EmbeddedBackend(tiny_model_dir, max_batch_size=8, num_threads=1, replicas=2, prefill_thread="on")
    threads = torch.get_num_threads()
    try:  # auto: one per core with one torch thread, at least 16 rows each
        for num_threads, batch, expected in ((1, 32, min(usable_cpus(), 2)), (1, 8, 1), (2, 32, 1)):
            b = EmbeddedBackend(tiny_model_dir, max_batch_size=batch, num_threads=num_threads)
            b.close()
            assert b.replicas == expected == len(b.workers), (num_threads, batch)
            assert b.max_batch_size == batch // expected
    finally:
        torch.set_num_threads(threads)
