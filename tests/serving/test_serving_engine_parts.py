"""The serving engine in parts (issue 18): each part imports on its own, no import cycle inside serving/, the
option resolution, the shared stats, replica workers as real objects, the routes mounted in their order.

    .venv/bin/python -m pytest tests/serving/test_serving_engine_parts.py -q
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from serving.engine_options import resolve_prefill_thread, resolve_replicas
from serving.engine_stats import EngineStats

SERVING = Path(__file__).resolve().parents[2] / "serving"
PARTS = ["serving.running_batch", "serving.prefill", "serving.replica", "serving.engine_options",
         "serving.engine_stats", "serving.embedded", "serving.api_errors", "serving.request_checks",
         "serving.generation_io", "serving.routes.models", "serving.routes.chat", "serving.routes.completions",
         "serving.routes", "serving.openai_server"]


def _module(path: Path) -> str:
    return ".".join(path.relative_to(SERVING.parent).with_suffix("").parts).removesuffix(".__init__")


def _relative_imports(path: Path) -> set[str]:
    """serving modules a file imports relatively, anywhere in it (functions and TYPE_CHECKING blocks too)."""
    package = _module(path).split(".") if path.name == "__init__.py" else _module(path).split(".")[:-1]
    known = {_module(p) for p in SERVING.rglob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:
                target = f"{base}.{a.name}"
                out.add(target if target in known else base)
    return out - {_module(path)}


def test_no_import_cycle_inside_serving():
    graph = {_module(p): _relative_imports(p) for p in SERVING.rglob("*.py")}

    def reaches(start: str, goal: str, seen: set) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    assert [m for m in graph if reaches(m, m, set())] == []


@pytest.mark.parametrize("first", ["serving.running_batch", "serving.replica", "serving.routes.chat"])
def test_each_part_imports_first_in_a_fresh_interpreter(first):
    order = [first] + [m for m in PARTS if m != first]
    code = "; ".join(f"import {m}" for m in order)
    done = subprocess.run([sys.executable, "-c", code], cwd=SERVING.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_replicas_and_prefill_thread_resolution():
    cpu = torch.device("cpu")
    assert resolve_replicas(3, "off", slab=True, device=cpu, max_batch_size=8) == 3
    with pytest.raises(ValueError, match="need a CPU device"):
        resolve_replicas(2, "auto", slab=False, device=cpu, max_batch_size=8)
    with pytest.raises(ValueError, match="cannot exceed"):
        resolve_replicas(9, "auto", slab=True, device=cpu, max_batch_size=8)
    assert resolve_replicas("auto", "auto", slab=True, device=torch.device("cuda"), max_batch_size=64) == 1
    assert resolve_prefill_thread("on", slab=True, device=cpu, max_batch_size=4, replicas=1) is True
    assert resolve_prefill_thread("auto", slab=True, device=cpu, max_batch_size=4, replicas=2) is False
    with pytest.raises(ValueError, match="needs a CPU device"):
        resolve_prefill_thread("on", slab=True, device=cpu, max_batch_size=1, replicas=1)


def test_engine_stats_add_observe_and_count():
    stats, seen = EngineStats(), []
    stats.on_batch = lambda rows, phase: seen.append((rows, phase))
    stats.add(requests=2, prefill_tokens=5)
    stats.observe(3, "decode")
    stats.observe(1, "prefill")
    with stats.lock:
        stats.count_decode(torch.tensor([[0, 1, 1], [1, 1, 1]]), [(0, 1, 1), (1, 2, 0)])
    t = stats.totals
    assert (t["requests"], t["prefill_tokens"], stats.max_batch_seen) == (2, 5, 3)
    assert seen == [(3, "decode"), (1, "prefill")]
    assert (t["decode_tokens"], t["decode_kv_tokens"], t["decode_kv_padded_tokens"], t["decode_kv_read_tokens"]) == \
        (2, 5, 6, 2 + 3)


def test_replica_workers_share_the_engine_and_its_stats(replicated_backend):
    from serving.replica import ReplicaWorker

    b = replicated_backend
    assert all(type(w) is ReplicaWorker and w.engine is b for w in b.workers)
    assert len({id(w.batch) for w in b.workers}) == len(b.workers) == 2
    assert b.stats is b._stats.totals  # one stats object, whichever worker adds to it
    b.max_batch_seen = 0
    assert b._stats.max_batch_seen == 0


def test_routes_are_mounted_in_their_order():
    from serving.openai_server import create_app

    doc = create_app(object(), "m").openapi()  # routers are included lazily: read the routes off the document
    assert [(path, sorted(ops)) for path, ops in doc["paths"].items()] == [
        ("/health", ["get"]), ("/metrics", ["get"]), ("/v1/models", ["get"]), ("/v1/models/{model_id}", ["get"]),
        ("/v1/chat/completions", ["post"]), ("/v1/completions", ["post"]), ("/v1/weights", ["post"])]
