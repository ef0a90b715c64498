"""Grounding: turn free-form model output into a valid action of the environment, or explain why not."""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from agent.tool_call_format import call_texts, has_calls
from envs.base import Action, ActionSpace

# Common phrasings a model (or a human) uses for BabyAI's text actions.
ALIASES = {
    "left": "turn left",
    "right": "turn right",
    "forward": "go forward",
    "move forward": "go forward",
    "pickup": "pick up",
    "pick": "pick up",
    "open": "toggle",
    "finish": "done",
    "stop": "done",
}


@dataclass
class Grounded:
    action: Action | None
    error: str = ""  # feedback for the model when action is None


def ground_text_action(raw: str, valid: list[str]) -> Grounded:
    text = (raw or "").strip().splitlines()[0].strip().lower() if (raw or "").strip() else ""
    text = re.sub(r"[^a-z ]+", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    if not (raw or "").strip():
        return Grounded(None, f"empty action; reply with one of: {', '.join(valid)}")
    candidate = text if text in valid else ALIASES.get(text)
    if candidate is None:
        # accept an action name embedded in a sentence, e.g. "i will go forward"
        hits = [v for v in valid if re.search(rf"\b{re.escape(v)}\b", text)]
        candidate = hits[0] if len(hits) == 1 else None
    if candidate is None or candidate not in valid:
        return Grounded(None, f"invalid action {raw.strip()[:40]!r}; reply with one of: {', '.join(valid)}")
    return Grounded(Action(candidate))


# -- grounding by action-space kind ----------------------------------------------------------------
# Text spaces use ground_text_action above (unchanged: BabyAI models were trained against it). Tool
# spaces take OpenAI tool calls (or Hermes <tool_call> text from servers that do not parse them)
# and validate names, argument types against the JSON schema, and the env's preconditions.

# A closing message that hands the task back (cannot do it, needs something) instead of finishing it.
_GIVE_UP = re.compile(
    r"\b(cannot|can ?not|can't|unable|not able|could ?n[o']t|impossible|missing|not available|give up|"
    r"no (?:function|tool)s?|please (?:provide|specify|clarify|confirm)|could you (?:provide|specify|tell)|"
    r"i need (?:the|more|to know)|which (?:one|file|id))\b",
    re.IGNORECASE,
)


def message_claim(text: str) -> str:
    """The claim a closing message makes: "done", "give_up" (cannot / asks for what is missing) or ""."""
    text = (text or "").strip()
    if not text:
        return ""
    return "give_up" if _GIVE_UP.search(text) or text.endswith("?") else "done"


@dataclass
class Grounding:
    """One policy output grounded against an action space."""

    actions: list[Action] = field(default_factory=list)  # to execute, in order; empty when invalid
    error: str = ""  # feedback for the model when the output is rejected
    claim: str = ""  # "done" | "give_up" | "" (a claim action or a closing message)
    calls: list[dict] = field(default_factory=list)  # tool spaces: [{"id", "name", "arguments"}] as understood

    @property
    def ok(self) -> bool:
        return not self.error


def ground(output: Any, space: ActionSpace, env: Any = None) -> Grounding:
    """Parse and validate a policy output (text or PolicyOutput) for `space`; never raises on bad output."""
    content, tool_calls = _split(output)
    if space.kind == "text":
        g = ground_text_action(content, space.names)
        if g.action is None:
            return Grounding(error=g.error)
        reason = _precondition(env, g.action)
        if reason:
            return Grounding(error=f"action {g.action.name!r} cannot be done now: {reason}")
        return Grounding([g.action], claim=space.claims.get(g.action.name, ""))
    if space.kind == "tools":
        return _ground_tools(content, tool_calls, space, env)
    raise ValueError(f"unknown action space kind {space.kind!r}: expected 'text' or 'tools'")


def ground_exact(output: Any, space: ActionSpace) -> Grounding:
    """Grounding switched off (`RunnerConfig(harness_off=["grounding"])`): what the environment takes as
    written. Text: exactly an action name (surrounding whitespace aside: no aliases, no action inside a
    sentence, no precondition). Tools: the calls as written, names and arguments unchecked, or a
    plain-text reply. Only output that is no action at all is refused."""
    content, tool_calls = _split(output)
    if space.kind == "text":
        name = content.strip()
        if name not in space.names:
            return Grounding(error=f"{name[:40]!r} is not an action name; reply with one of: {', '.join(space.names)}")
        return Grounding([Action(name)], claim=space.claims.get(name, ""))
    if not tool_calls and has_calls(content):
        tool_calls, errors = _calls_from_text(content)
        if errors:
            return Grounding(error="unreadable tool call: " + " | ".join(errors))
    if not tool_calls:
        if not space.message_action:
            return Grounding(error=f"reply with a tool call; available: {', '.join(space.names)}")
        return Grounding([Action(space.message_action, {"content": content.strip()})], claim=message_claim(content))
    actions, calls = [], []
    for i, call in enumerate(tool_calls):
        fn = call.get("function", call) if isinstance(call, dict) else {}
        name, args = fn.get("name"), fn.get("arguments", {})
        try:
            args = (json.loads(args) if args.strip() else {}) if isinstance(args, str) else args
        except ValueError as e:
            return Grounding(error=f"unreadable tool call: call {i + 1}: malformed JSON arguments ({e})")
        if not isinstance(name, str) or not name or not isinstance(args, dict):
            return Grounding(error=f"unreadable tool call: call {i + 1} needs a name and an arguments object")
        actions.append(Action(name, args))
        calls.append({"id": call.get("id") or "", "name": name, "arguments": args})
    return Grounding(actions, calls=calls)


def _split(output: Any) -> tuple[str, list]:
    if isinstance(output, str) or output is None:
        return output or "", []
    return getattr(output, "content", "") or "", list(getattr(output, "tool_calls", []) or [])


def _precondition(env: Any, action: Action) -> str:
    check = getattr(env, "precondition", None)
    if not callable(check):
        return ""
    try:
        return check(action) or ""
    except Exception as e:  # a precondition that cannot even be evaluated rejects the action
        return f"precondition check failed ({type(e).__name__}: {e})"


def _ground_tools(content: str, tool_calls: list, space: ActionSpace, env: Any) -> Grounding:
    errors: list[str] = []
    if not tool_calls and has_calls(content):
        tool_calls, errors = _calls_from_text(content)
    if not tool_calls and not errors:
        if not space.message_action:
            return Grounding(error=f"reply with a tool call; available: {', '.join(space.names)}")
        text = content.strip()
        return Grounding([Action(space.message_action, {"content": text})], claim=message_claim(text))
    schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in space.tools}
    schemas.update(space.validation)
    actions, calls = [], []
    for i, call in enumerate(tool_calls):
        fn = call.get("function", call) if isinstance(call, dict) else {}
        name, raw_args = fn.get("name"), fn.get("arguments", {})
        where = f"call {i + 1} ({name})" if name else f"call {i + 1}"
        if isinstance(raw_args, str):
            try:
                raw_args = json.loads(raw_args) if raw_args.strip() else {}
            except ValueError as e:
                errors.append(f"{where}: malformed JSON arguments ({e})")
                continue
        calls.append({"id": call.get("id") or "", "name": name, "arguments": raw_args})
        if not isinstance(name, str) or not name:
            errors.append(f"{where}: no function name")
            continue
        if name not in space.names:
            close = difflib.get_close_matches(name, space.names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; {len(space.names)} functions are available"
            reason = _precondition(env, Action(name, {}))
            errors.append(f"{where}: {reason or 'unknown function ' + repr(name)}{hint}")
            continue
        if not isinstance(raw_args, dict):
            errors.append(f"{where}: arguments must be a JSON object, got {type(raw_args).__name__}")
            continue
        problems = check_arguments(raw_args, schemas.get(name, {}))
        action = Action(name, raw_args)
        reason = "" if problems else _precondition(env, action)
        if problems or reason:
            errors.append(f"{where}: {'; '.join(problems) or reason}")
            continue
        actions.append(action)
    if errors:
        return Grounding(error="invalid tool call: " + " | ".join(errors) + ". Nothing was executed; call again.",
                         calls=calls)
    return Grounding(actions, calls=calls)


def _calls_from_text(text: str) -> tuple[list, list[str]]:
    calls, errors = [], []
    for k, body in enumerate(call_texts(text)):
        try:
            obj = json.loads(body)
        except ValueError as e:
            errors.append(f"call {k + 1}: malformed JSON in <tool_call> ({e})")
            continue
        if not isinstance(obj, dict):
            errors.append(f"call {k + 1}: a <tool_call> must hold a JSON object with name and arguments")
            continue
        calls.append({"function": {"name": obj.get("name"), "arguments": obj.get("arguments", obj.get("parameters", {}))}})
    return calls, errors


_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def _type_name(v: Any) -> str:
    return {str: "string", bool: "boolean", int: "integer", float: "number", list: "array", dict: "object"}.get(
        type(v), "null" if v is None else type(v).__name__)


def check_arguments(args: dict, schema: dict, path: str = "") -> list[str]:
    """Problems of `args` against an object JSON schema (the subset tool docs use); [] when valid."""
    props = schema.get("properties") or {}
    problems = [f"missing required argument {path + r!r}" for r in schema.get("required", []) if r not in args]
    for key, value in args.items():
        if key not in props:
            if props or schema.get("additionalProperties") is False:
                problems.append(f"unexpected argument {path + key!r} (expected: {', '.join(props) or 'none'})")
            continue
        problems += _check_value(value, props[key], path + key)
    return problems


def _check_value(value: Any, schema: dict, path: str) -> list[str]:
    expected = schema.get("type")
    types = expected if isinstance(expected, list) else [expected] if expected else []
    if types and not any(_JSON_TYPES.get(t, lambda v: True)(value) for t in types):
        return [f"argument {path!r} must be {' or '.join(types)}, got {_type_name(value)} {json.dumps(value)[:40]}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"argument {path!r} must be one of {schema['enum']}, got {json.dumps(value)[:40]}"]
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        out = []
        for i, item in enumerate(value):
            out += _check_value(item, schema["items"], f"{path}[{i}]")
        return out[:3]
    if isinstance(value, dict) and schema.get("properties"):
        return check_arguments(value, schema, path + ".")
    return []
