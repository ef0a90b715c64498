"""The contract between the HTTP layer (serving/openai_server.py) and a generation backend.

    python -c "import serving.backend_api"      # no torch import: the server module only needs this

`EmbeddedBackend` implements `Backend`; tests use a scripted fake with the same shape.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Protocol

# (choice index, text delta, finish_reason or None); called from the worker thread.
EventCallback = Callable[[int, str, "str | None"], None]


class BackendError(Exception):
    """Base class of errors raised by `Backend.submit`."""


class QueueFullError(BackendError):
    """The request queue is full; the server answers 429 with Retry-After."""

    def __init__(self, retry_after: float = 1.0):
        super().__init__("server is busy: request queue is full, retry later")
        self.retry_after = retry_after


class PromptValidationError(BackendError, ValueError):
    """A request can never be served as given (too long, bad max_tokens...); `param` names the field."""

    def __init__(self, message: str, param: str | None):
        super().__init__(message)
        self.message, self.param = message, param


class BackendClosedError(BackendError):
    """The backend is shutting down."""


@dataclass
class SamplingParams:
    max_tokens: int | None = None  # None -> min(max_new_tokens_limit, room left in the context)
    temperature: float = 1.0  # 0 -> greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None  # per-request torch.Generator; choice i uses seed + i
    n: int = 1
    # A shape the output must take (serving/grammar.py: JSON mode, a forced tool call); None = free text.
    grammar: object | None = None


@dataclass
class Choice:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str  # 'stop' | 'length'


@dataclass
class GenerationResult:
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int


class Handle(Protocol):
    future: Future  # resolves to GenerationResult, or raises a BackendError / model error

    def cancel(self) -> None: ...


class Backend(Protocol):
    max_context: int  # prompt + completion tokens
    max_new_tokens_limit: int  # largest allowed max_tokens
    vocab_size: int
    chat_template: str  # the jinja source (checked for `tools` support)
    queue_depth: int
    active_rows: int
    on_batch: Callable[[int, str], None] | None  # set by the server's metrics

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None) -> str: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def submit(self, prompt_ids: list[int], params: SamplingParams, on_event: EventCallback | None = None,
               prompt_param: str = "messages") -> Handle:
        """Queue a request; raises PromptValidationError, QueueFullError or BackendClosedError."""
