"""Layers import downward only and no two modules import each other (ARCHITECTURE.md, issue 18).

    python -m pytest -q tests/test_layers.py

The import graph is read from the source (ast), imports inside functions included: a cycle hidden in a
function is still a cycle of design, and an upward import inside a function still ties a lower layer
to a higher one. The same check as ../shared/tools/layers.py, here so a fresh clone runs it too.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# lower index = lower layer; a module may import its own layer or lower ones
LAYERS = [["envs"], ["agent", "serving"], ["data_collection", "rollout"], ["training", "eval"], ["cluster"]]
LAYER_OF = {pkg: i for i, pkgs in enumerate(LAYERS) for pkg in pkgs}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in LAYER_OF:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            mods[".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its file (a package import names its __init__)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and not m.startswith(t + "."):  # a package's own __init__ is not a cycle
                    graph[m].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((m, t) for m, ts in graph.items() for t in ts
                  if LAYER_OF[t.split(".")[0]] > LAYER_OF[m.split(".")[0]])


def test_the_checker_finds_a_cycle_and_an_upward_import():
    """The check itself: a cycle through a function-level import, and a lower layer importing a higher one."""
    graph = {"envs.a": {"cluster.b"}, "cluster.b": set(), "eval.x": {"eval.y"}, "eval.y": {"eval.z"},
             "eval.z": {"eval.x"}, "agent.k": set()}
    assert cycles(graph) == [["eval.x", "eval.y", "eval.z"]]
    assert upward(graph) == [("envs.a", "cluster.b")]
    src = "def f():\n    from eval.report_html import render_html\n"
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(ast.parse(src)))  # the walk sees function bodies


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (move what both need to a module both can import):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_no_module_imports_a_higher_layer():
    found = upward(import_graph())
    assert not found, f"upward imports (layers: {LAYERS}):\n" + "\n".join(f"{m} -> {t}" for m, t in found)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("first,then", [
    # the cycles issue 18 removed, each imported from both ends in a fresh interpreter
    ("data_collection.card", "data_collection.collector"), ("data_collection.collector", "data_collection.card"),
    ("eval.report_html", "eval.report"), ("eval.report", "eval.report_html"),
    ("eval.replays", "eval.evaluator"), ("eval.evaluator", "eval.replays"),
    ("envs.bfcl", "envs.registry"), ("envs.registry", "envs.bfcl"),
])
def test_former_cycles_import_from_either_end(first, then):
    r = _python(f"import {first}, {then}")
    assert r.returncode == 0, r.stderr[-3000:]


def test_every_module_imports_top_layer_first():
    """Every project module in one interpreter, the highest layer first: a module-level cycle fails here."""
    mods = sorted(_modules(), key=lambda m: (-LAYER_OF[m.split(".")[0]], m))
    r = _python("import importlib\nfor m in %r:\n    importlib.import_module(m)" % mods)
    assert r.returncode == 0, r.stderr[-3000:]


def test_agrees_with_the_shared_layers_tool():
    """Where the workspace's ../shared/tools/layers.py exists (not in a fresh clone), it agrees."""
    tool = next((p / "shared/tools/layers.py" for p in ROOT.parents[:2] if (p / "shared/tools/layers.py").exists()), None)
    if tool is None:
        pytest.skip("no ../shared/tools/layers.py here (a fresh clone); the tests above are the same check")
    r = subprocess.run([sys.executable, str(tool), "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("cycles: 0; upward imports: 0"), r.stdout
