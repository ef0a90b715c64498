"""Pydantic request models for the OpenAI-compatible routes (see serving/openai_server.py).

Unknown fields are ignored (clients send many optional OpenAI fields); `null` means "use the default",
as some clients send explicit nulls.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_STOP_STRINGS = 16


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Base):
    type: str
    text: str | None = None


class FunctionCall(_Base):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Base):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Base):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Base):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Base):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedToolChoice(_Base):
    type: Literal["function"] = "function"
    function: FunctionCall | dict[str, Any]


class ResponseFormat(_Base):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(_Base):
    include_usage: bool | None = False


class _Sampling(_Base):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: Any = None  # accepted so we can reject it with a clear message

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = False
    suffix: str | None = None


# Parts of a pydantic error location that name a union member or validator, not a request field.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"}


def error_param(loc: tuple) -> str | None:
    """('messages', 0, 'content', 'str') -> 'messages.0.content'; OpenAI clients show it as the bad field."""
    parts = []
    for p in loc:
        if isinstance(p, str) and (p in _TYPE_TAGS or "[" in p or "-" in p or p[:1].isupper()):
            continue
        parts.append(str(p))
    return ".".join(parts) or None


def describe_validation_error(err: ValidationError) -> tuple[str, str | None]:
    """Return (message, param) for the first few errors of a validation failure."""
    errors = err.errors(include_url=False)
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    msgs = []
    for e in errors[:3]:
        where = error_param(tuple(e.get("loc", ())))
        msgs.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "; ".join(msgs), error_param(tuple(first.get("loc", ())))
