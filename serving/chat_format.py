"""Chat formatting helpers: OpenAI messages -> chat-template dicts, tool rendering and tool-call parsing.

The tool-call format is the Hermes one, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, which is
also what `vllm serve --tool-call-parser hermes` parses, so both backends answer alike.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any

from .schemas import ChatMessage, Tool

# serving/ imports nothing else of the project: the one copy outside agent/tool_call_format.py (a test checks they agree)
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


class MessageError(ValueError):
    """A message cannot be rendered; `param` names it (e.g. messages.2.content)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def to_template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Convert validated OpenAI messages to the plain dicts HF chat templates expect."""
    out = []
    for i, m in enumerate(messages):
        if isinstance(m.content, list):
            texts = []
            for j, part in enumerate(m.content):
                if part.type != "text" or part.text is None:
                    raise MessageError(f"only text content parts are supported, got {part.type!r}",
                                       f"messages.{i}.content.{j}")
                texts.append(part.text)
            content = "".join(texts)
        else:
            content = m.content or ""  # templates index m['content']; None would render as "None" or fail
        msg: dict[str, Any] = {"role": m.role, "content": content}
        if m.name:
            msg["name"] = m.name
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            msg["tool_calls"] = [
                {"id": tc.id, "type": "function",
                 "function": {"name": tc.function.name, "arguments": _as_dict(tc.function.arguments)}}
                for tc in m.tool_calls
            ]
        out.append(msg)
    return out


def _as_dict(arguments: str | dict) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def tools_for_template(tools: list[Tool]) -> list[dict[str, Any]]:
    return [t.model_dump(exclude_none=True) for t in tools]


def add_tools_system_prompt(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Describe tools (Hermes style) in the system message. No longer used by the server (a model is
    served tools only through its own template, as it was trained); kept for callers that build prompts."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    text = ("You may call one or more functions to assist with the user query. Function signatures:\n"
            f"<tools>\n{lines}\n</tools>\nFor each function call, reply with "
            '<tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call>')
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


# -- the one chat-template code path: training samples and served prompts both come from here -------------

def template_inputs(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None):
    """OpenAI messages and tools (plain dicts, as a record stores them and an agent sends them) as the
    template sees them: through the server's own request models and conversion, so a training sample
    and a served request of the same conversation render identically."""
    from .schemas import ChatMessage, Tool

    msgs = to_template_messages([ChatMessage.model_validate(m) for m in messages])
    return msgs, (tools_for_template([Tool.model_validate(t) for t in tools]) if tools else None)


def render_chat_text(tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                     add_generation_prompt: bool = True, **template_kwargs) -> str:
    """Template-ready messages (template_inputs / to_template_messages) rendered by the tokenizer's chat template."""
    return tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=add_generation_prompt,
                                         tokenize=False, **template_kwargs)


def encode_text(tokenizer, texts: str | list[str]):
    """Rendered text -> token ids (no extra BOS: the template writes every special token itself)."""
    if isinstance(texts, str):
        return tokenizer.encode(texts, add_special_tokens=False)
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def template_supports_tools(tokenizer) -> bool:
    """Whether the chat template renders a tools list and an assistant tool call at all (a template
    that ignores `tools` would drop them silently)."""
    tools = [{"type": "function", "function": {"name": "probe_fn_q", "description": "",
                                               "parameters": {"type": "object", "properties": {}}}}]
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "probe_call_q", "arguments": {}}}]}
    user = {"role": "user", "content": "x"}
    try:
        with_tools = render_chat_text(tokenizer, [user], tools, add_generation_prompt=False)
        with_call = render_chat_text(tokenizer, [user, call], tools, add_generation_prompt=False)
    except Exception:
        return False
    return "probe_fn_q" in with_tools and "probe_call_q" in with_call


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """Split model output into (remaining content or None, OpenAI tool_calls); bad JSON stays content."""
    calls, kept, last = [], [], 0
    for m in _TOOL_CALL_RE.finditer(text):
        try:
            obj = json.loads(m.group(1))
        except ValueError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        calls.append({
            "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": obj["name"],
                         "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)},
        })
        kept.append(text[last:m.start()])
        last = m.end()
    if not calls:
        return text, []
    content = ("".join(kept) + text[last:]).strip()
    return content or None, calls


def extract_json_object(text: str) -> str:
    """Best-effort `response_format: json_object`: return the first JSON object in the text, else the text."""
    stripped = text.strip()
    try:
        if isinstance(json.loads(stripped), dict):
            return stripped
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return text[start:end]
    return text
