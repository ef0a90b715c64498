"""The Hermes tool-call wire format, written and read in one place:

    <tool_call>{"name": "move", "arguments": {"to": "door"}}</tool_call>

What a served model emits to call a tool, how the runner logs a call in the `action` column, and what
training renders after an assistant's content. Everyone above agent/ imports it from here; serving/
imports nothing else of the project (ARCHITECTURE.md), so serving/chat_format.py keeps a copy of
TOOL_CALL_RE and tests/agent/test_tool_call_format.py checks the two agree.
"""
from __future__ import annotations

import json
import re

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# A call's JSON between the tags; a reply cut off by max_tokens may lack the closing tag.
TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def format_call(body: dict) -> str:
    """{"name": ..., "arguments": {...}} as one tagged call."""
    return f"{OPEN}{json.dumps(body, ensure_ascii=False)}{CLOSE}"


def format_call_raw(name: str, arguments_json: str) -> str:
    """A call whose arguments are already JSON text, kept byte for byte (what the chat template renders)."""
    return f'{OPEN}{{"name": "{name}", "arguments": {arguments_json}}}{CLOSE}'


def has_calls(text: str) -> bool:
    return OPEN in text


def call_texts(text: str) -> list[str]:
    """The JSON text of every tagged call in `text`, in order."""
    return [m.group(1) for m in TOOL_CALL_RE.finditer(text)]
