"""The `bfcl-eval` package as data, executor and checker for the BFCL multi-turn environment.

    .venv/bin/pip install --no-deps bfcl-eval==2026.3.23 mpmath   # why --no-deps: README, "BFCL"

Everything the verdict depends on comes from the package: the entries and ground truth, the
function docs, its executor (`execute_multi_turn_func_call`) and its checker (`multi_turn_checker`:
state check + response check per turn). What lives here is isolation and format glue:

- The executor caches API instances in its module globals under "<model>_<entry id>_<class>".
  Every episode and every check uses its own model name (`lam_<uuid>`) and deletes its instances
  afterwards, so nothing leaks between episodes, threads or actors, and memory stays flat.
- Tool schemas: the package's `convert_to_tool(..., OPENAI_COMPLETIONS)` lives in a module that
  imports tree-sitter (not installed with --no-deps); `openai_tools` is the same conversion.
- Calls are executed as the strings the package's OpenAI handler decodes (`name(k=repr(v), ...)`).
"""
from __future__ import annotations

import ast
import copy
import inspect
import json
import os
import re
import tempfile
import threading
import uuid
from functools import lru_cache
from typing import Any

# bfcl_eval creates result/score/lock folders under BFCL_PROJECT_ROOT at import; default would be
# site-packages. Keep them in a temp folder instead.
os.environ.setdefault("BFCL_PROJECT_ROOT", os.path.join(tempfile.gettempdir(), f"lam-bfcl-{os.getuid()}"))

VERSION = "2026.3.23"
INSTALL_HINT = f"run `.venv/bin/pip install --no-deps bfcl-eval=={VERSION} mpmath` (see README, BFCL)"
CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
SHORT_NAMES = {c.removeprefix("multi_turn_"): c for c in CATEGORIES}  # "base" -> "multi_turn_base"
# Left out: they need the network or extra models, which the --no-deps install does not bring.
UNSUPPORTED_CLASSES = {
    "WebSearchAPI": "needs the network (live web search)",
    "MemoryAPI_kv": "needs on-disk memory snapshots from prerequisite conversations",
    "MemoryAPI_vector": "needs sentence-transformers and faiss (embedding models)",
    "MemoryAPI_rec_sum": "needs on-disk memory snapshots from prerequisite conversations",
}
HOLDOUT_TURN_PROMPT = "I have updated some more functions you can choose from. What about now?"
_lock = threading.Lock()


class BfclUnavailable(ImportError):
    pass


def require() -> None:
    try:
        import bfcl_eval  # noqa: F401
        import mpmath  # noqa: F401
    except ImportError as e:
        raise BfclUnavailable(f"the BFCL environment needs the bfcl-eval package ({e}); {INSTALL_HINT}") from None


def category_of(level: str) -> str:
    category = SHORT_NAMES.get(level, level)
    if category not in CATEGORIES:
        other = ("web_search" in level and "WebSearchAPI " + UNSUPPORTED_CLASSES["WebSearchAPI"]) or (
            "memory" in level and "MemoryAPI " + UNSUPPORTED_CLASSES["MemoryAPI_vector"])
        why = f" ({other}; left out)" if other else ""
        raise ValueError(f"unknown BFCL category {level!r}{why}; supported: {', '.join(CATEGORIES)}")
    return category


@lru_cache(maxsize=None)
def _load(category: str) -> tuple[dict, ...]:
    require()
    from bfcl_eval.utils import load_dataset_entry, load_ground_truth_entry

    with _lock:
        entries = load_dataset_entry(category)
        truth = {g["id"]: g["ground_truth"] for g in load_ground_truth_entry(category)}
    out = []
    for e in entries:
        bad = [c for c in e["involved_classes"] if c in UNSUPPORTED_CLASSES]
        if bad:
            raise ValueError(f"entry {e['id']} uses {bad[0]}, which {UNSUPPORTED_CLASSES[bad[0]]}; left out")
        e["ground_truth"] = truth[e["id"]]
        out.append(e)
    return tuple(out)


def entries(category: str) -> list[dict]:
    """All entries of a category, in the package's order (index i is id "<category>_i")."""
    return list(_load(category_of(category)))


def entry(category: str, index: int) -> dict:
    """A private deep copy of one entry (with its "ground_truth"): episodes may not share state."""
    all_entries = _load(category_of(category))
    if not 0 <= index < len(all_entries):
        raise ValueError(f"BFCL {category} has entries 0..{len(all_entries) - 1}, not {index}")
    return copy.deepcopy(all_entries[index])


# -- tool schemas (the package's OPENAI_COMPLETIONS conversion) ---------------------------------------
def _cast_to_openai_type(properties: dict, mapping: dict) -> dict:
    for key, value in properties.items():
        if "type" not in value:
            value["type"] = "string"
        else:
            var_type = value["type"]
            if var_type == "float":
                value["format"] = "float"
                value["description"] += " This is a float type value."
            value["type"] = mapping.get(var_type, "string")
        if value["type"] in ("array", "object"):
            if "properties" in value:
                value["properties"] = _cast_to_openai_type(value["properties"], mapping)
            elif "items" in value:
                value["items"]["type"] = mapping[value["items"]["type"]]
                items = value["items"]
                if items["type"] == "array" and "items" in items:
                    items["items"]["type"] = mapping[items["items"]["type"]]
                elif items["type"] == "object" and "properties" in items:
                    items["properties"] = _cast_to_openai_type(items["properties"], mapping)
    return properties


def openai_tools(functions: list[dict]) -> list[dict]:
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI

    tools = []
    for item in copy.deepcopy(functions):
        item["name"] = re.sub(r"\.", "_", item["name"])
        item["parameters"]["type"] = "object"
        item["parameters"]["properties"] = _cast_to_openai_type(item["parameters"]["properties"], GORILLA_TO_OPENAPI)
        tools.append({"type": "function", "function": item})
    return tools


# -- calls ----------------------------------------------------------------------------------------
def call_string(name: str, arguments: dict) -> str:
    """What the package's OpenAI handler decodes a tool call into (`convert_to_function_call`)."""
    return f"{name}({','.join(f'{k}={v!r}' for k, v in arguments.items())})"


def _class_of(class_name: str):
    import importlib

    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

    return getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def parse_gold_call(call: str, involved_classes: list[str]) -> tuple[str, dict]:
    """A ground-truth string like "sort('a.pdf')" -> ("sort", {"file_name": "a.pdf"}): positional
    arguments get their parameter names from the API method's signature."""
    node = ast.parse(call.strip(), mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a plain function call: {call!r}")
    name = node.func.id
    kwargs = {kw.arg: _jsonable(ast.literal_eval(kw.value)) for kw in node.keywords}
    if node.args:
        method = next((getattr(_class_of(c), name) for c in involved_classes if hasattr(_class_of(c), name)), None)
        if method is None:
            raise ValueError(f"no involved API has a method {name!r} ({call!r})")
        params = [p for p in inspect.signature(method).parameters if p != "self"]
        for pname, arg in zip(params, node.args):
            kwargs[pname] = _jsonable(ast.literal_eval(arg))
    return name, kwargs


# -- isolated execution and checking ------------------------------------------------------------------
def _utils():
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    return multi_turn_utils


def new_namespace() -> str:
    return f"lam_{uuid.uuid4().hex}"


def release(namespace: str) -> None:
    """Drop every API instance the package cached for `namespace` (its globals keys start with it)."""
    g = vars(_utils())
    for key in [k for k in list(g) if k.startswith(namespace + "_")]:
        g.pop(key, None)


def is_long_context(entry_id: str) -> bool:
    return "long_context" in entry_id or "composite" in entry_id


def execute(calls: list[str], e: dict, namespace: str) -> tuple[list[str], dict]:
    """Run call strings on the entry's API instances for `namespace` (created on first use)."""
    return _utils().execute_multi_turn_func_call(
        calls, e["initial_config"], e["involved_classes"], namespace, e["id"], long_context=is_long_context(e["id"])
    )


def check(e: dict, calls_by_turn: list[list[str]], n_turns: int | None = None) -> dict:
    """The package's multi-turn verdict on the first n_turns turns (all by default).

    calls_by_turn[t] holds the executed call strings of turn t, in order. Each call is passed as its
    own step; the checker concatenates the steps of a turn, so the verdict is the one the package
    gives the same calls in any step grouping. Returns the checker's dict ("valid", error fields)."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    n = len(e["ground_truth"]) if n_turns is None else n_turns
    if len(calls_by_turn) < n:
        return {"valid": False, "error_type": "multi_turn:force_terminated",
                "error_message": f"only {len(calls_by_turn)} of {n} turns were completed"}
    decoded = [[[c] for c in turn] for turn in calls_by_turn[:n]]
    namespace = new_namespace()
    try:
        return multi_turn_checker(decoded, e["ground_truth"][:n], e, e["id"].rsplit("_", 1)[0], namespace)
    except Exception as err:  # the checker asserts on malformed instance sets: a failed check, not a crash
        return {"valid": False, "error_type": "multi_turn:checker_error", "error_message": f"{type(err).__name__}: {err}"}
    finally:
        release(namespace)


def turn_without_calls(calls: list[str]) -> dict:
    """Turns whose ground truth is empty (missing function / parameter): the package's irrelevance
    check, i.e. the model should not call anything there (and ask or say it cannot)."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_irrelevance_checker

    return multi_turn_irrelevance_checker([[[c] for c in calls]], [[]])


# -- state summary ----------------------------------------------------------------------------------
def summarize(value: Any, depth: int = 0, max_items: int = 30, max_chars: int = 300) -> Any:
    """JSON-ready summary of an API's public state: private fields, back-references (`parent`) and
    object addresses are left out so the text is deterministic; long parts are cut with a marker."""
    if depth > 8:
        return "..."
    if isinstance(value, str):
        return value if len(value) <= max_chars else value[:max_chars] + f"... (+{len(value) - max_chars} chars)"
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple, set)):
        items = sorted(value, key=repr) if isinstance(value, set) else list(value)
        out = [summarize(v, depth + 1) for v in items[:max_items]]
        return out + [f"... (+{len(items) - max_items} more)"] if len(items) > max_items else out
    if isinstance(value, dict):
        keys = list(value)
        out = {str(k): summarize(value[k], depth + 1) for k in keys[:max_items]}
        if len(keys) > max_items:
            out["..."] = f"+{len(keys) - max_items} more"
        return out
    if hasattr(value, "__dict__"):
        public = {k: v for k, v in vars(value).items() if not k.startswith("_") and k != "parent"}
        return summarize(public, depth + 1)
    return str(value)


def state_summary(instances: dict) -> dict:
    from bfcl_eval.constants.executable_backend_config import STATELESS_CLASSES

    return {name: summarize(obj) for name, obj in sorted(instances.items()) if name not in STATELESS_CLASSES}


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=False, default=str)
