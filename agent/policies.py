"""Policies behind one interface: expert, random, scripted replay, and a model over the OpenAI API."""
from __future__ import annotations

import json
import random
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.tool_call_format import format_call
from envs.base import Action, Environment, Task, action_space_of


SERVED_KINDS = ("model", "takeover")  # the policy kinds that ask a served model (its endpoint is checked first)


class PolicyError(RuntimeError):
    """The policy could not produce any output (e.g. the model server is unreachable)."""


class EpisodeTimeout(Exception):
    """The episode's wall-clock limit hit (raised by the runner's alarm, possibly inside a policy)."""


@dataclass
class PolicyOutput:
    """What a policy says in a tool space: text, OpenAI tool calls, or both. Text spaces use plain str."""

    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)  # [{"id", "type": "function", "function": {...}}]

    def to_text(self) -> str:
        """One string for logs and records: the content, or the calls as Hermes <tool_call> text
        (what a served model emits to produce them)."""
        calls = [format_call(_call_body(c)) for c in self.tool_calls]
        return "\n".join(([self.content] if self.content else []) + calls)


def tool_call(name: str, arguments: dict | str, call_id: str | None = None) -> dict:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": call_id or f"call_{uuid.uuid4().hex[:12]}", "type": "function",
            "function": {"name": name, "arguments": args}}


def _call_body(call: dict) -> dict:
    fn = call.get("function", call) if isinstance(call, dict) else {}
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            pass
    return {"name": fn.get("name"), "arguments": args}


def as_output(decision: Any) -> PolicyOutput | str:
    """An expert's or a script's decision as policy output: str stays text; Actions become tool calls."""
    if isinstance(decision, (str, PolicyOutput)):
        return decision
    if isinstance(decision, Action):
        decision = [decision]
    if isinstance(decision, list):
        return PolicyOutput(tool_calls=[tool_call(a.name, a.arguments) for a in decision])
    if isinstance(decision, dict):
        return PolicyOutput(content=decision.get("content") or "", tool_calls=list(decision.get("tool_calls") or []))
    raise TypeError(f"cannot use {type(decision).__name__} as a policy output")


class Policy(Protocol):
    name: str

    def begin(self, env: Environment, task: Task) -> None:
        """Called after env.reset(task), before the first act()."""

    def act(self, messages: list[dict], env: Environment, step: int, attempt: int) -> str | PolicyOutput:
        """Return raw text (or text + tool calls in tool spaces); grounding parses and validates it."""


class ExpertPolicy:
    """The environment's own expert (the BabyAI bot): knows internals the model never sees."""

    name = "expert"

    def begin(self, env: Environment, task: Task) -> None:
        self._expert = env.make_expert()

    def act(self, messages, env, step, attempt):
        return _expert_output(self._expert.act(), env)


def _expert_output(decision, env) -> PolicyOutput | str:
    """An expert's decision as the env's action space wants it: a name in text spaces, else tool calls."""
    if isinstance(decision, Action) and action_space_of(env).kind == "text":
        return decision.name
    return as_output(decision)


class RandomPolicy:
    """Uniform over the action space, never claiming completion (a claim is not an action)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed

    def begin(self, env, task) -> None:
        self._rng = random.Random(f"{self._seed}/{task.task_id}")

    def act(self, messages, env, step, attempt):
        space = action_space_of(env)
        if space.kind == "tools":  # a random type-correct call, or (1 in 4) a closing message
            if space.message_action and self._rng.random() < 0.25:
                return "done"
            fn = self._rng.choice(space.tools)["function"]
            return PolicyOutput(tool_calls=[tool_call(fn["name"], random_arguments(fn.get("parameters") or {}, self._rng))])
        return self._rng.choice([a for a in env.action_names() if a != "done"])


def random_arguments(schema: dict, rng: random.Random) -> dict:
    """Type-correct values for the required arguments of an object schema."""
    def value(s: dict):
        t = s.get("type")
        if "enum" in s:
            return rng.choice(s["enum"])
        if t == "integer":
            return rng.randint(0, 10)
        if t == "number":
            return round(rng.uniform(0, 100), 2)
        if t == "boolean":
            return rng.random() < 0.5
        if t == "array":
            return [value(s.get("items") or {"type": "string"}) for _ in range(rng.randint(1, 2))]
        if t == "object":
            return random_arguments(s, rng)
        return rng.choice(["a", "test", "file.txt", "1", "alice"])

    props = schema.get("properties") or {}
    return {k: value(props.get(k, {})) for k in schema.get("required", []) if k in props}


class ScriptedPolicy:
    """Replays a fixed list per task (recorded episodes, gold sequences, perturbed replays); then
    claims done. Items are text, or PolicyOutput (or Action lists) in tool spaces."""

    name = "scripted"

    def __init__(self, actions_by_task: dict[str, list]) -> None:
        self._by_task = actions_by_task

    def begin(self, env, task) -> None:
        self._actions = list(self._by_task.get(task.task_id, []))

    def act(self, messages, env, step, attempt) -> str:
        return self._actions[step] if step < len(self._actions) else "done"


class PrefixExpertPolicy:
    """Planted truth for false-success detection: plays the expert for a random prefix of
    0..max_prefix steps (fixed by seed and task), then claims done. A claim made before the expert
    finished is a false success, and only the environment's verdict can tell which ones those are."""

    name = "prefix-expert"

    def __init__(self, seed: int = 0, max_prefix: int = 12) -> None:
        self._seed, self._max_prefix = seed, max_prefix

    def begin(self, env, task) -> None:
        self._expert = env.make_expert()
        self.prefix = random.Random(f"prefix/{self._seed}/{task.task_id}").randint(0, self._max_prefix)

    def act(self, messages, env, step, attempt) -> PolicyOutput | str:
        if step < self.prefix:
            return _expert_output(self._expert.act(), env)
        # the claim: "done" in text spaces, a closing plain-text reply in tool spaces
        return "done" if action_space_of(env).kind == "text" else PolicyOutput(content="Done.")


class ModelEndpointError(Exception):
    """A model policy's server is down, refuses the key, is not an OpenAI server, or lacks the model.
    `code`: model_unreachable | model_auth_failed | model_endpoint_error | unknown_model."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_model_endpoint(spec: dict, *, timeout_s: float = 3.0, url_flag: str = "policy.base_url",
                         key_flag: str = "policy.api_key", model_flag: str = "policy.model") -> None:
    """Before any episode: GET {base_url}/models answers and lists spec["model"]; else ModelEndpointError.
    The agent API (424/400), `lam collect` and `lam eval` all call this one check; the flags name what the
    caller's user sets. A dead URL otherwise costs every episode its retries before anything is said."""
    import httpx

    if spec.get("kind", "model") not in SERVED_KINDS:
        return
    base = spec["base_url"]
    url = base.rstrip("/") + "/models"
    key = spec.get("api_key")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise ModelEndpointError("model_unreachable", f"model endpoint {base} is unreachable ({type(e).__name__}: "
                                 f"{e}); start it (`lam serve --model DIR`) or fix {url_flag}") from None
    if r.status_code in (401, 403):
        raise ModelEndpointError("model_auth_failed", f"model endpoint {base} refused the key "
                                 f"(HTTP {r.status_code}); set {key_flag}")
    if r.status_code != 200:
        raise ModelEndpointError("model_endpoint_error", f"GET {url} answered HTTP {r.status_code}: {r.text[:200]}")
    try:
        served = [m["id"] for m in r.json().get("data", [])]
    except (ValueError, AttributeError, KeyError, TypeError):
        raise ModelEndpointError("model_endpoint_error", f"GET {url} did not return an OpenAI model list") from None
    if served and spec["model"] not in served:
        raise ModelEndpointError("unknown_model", f"model {spec['model']!r} is not served at {base}; "
                                 f"served: {', '.join(served)} ({model_flag})")


class ModelPolicy:
    """A model behind any OpenAI-compatible server (the embedded one, vLLM, a hosted model)."""

    name = "model"
    replay_by_asking = False  # stateless between calls: a session rebuild replays its recorded outputs

    def __init__(
        self,
        base_url: str,
        model: str,
        temperature: float = 0.0,
        max_tokens: int = 16,
        timeout_s: float = 60.0,
        retries: int = 3,
        api_key: str = "EMPTY",
        seed: int = 0,
        tool_max_tokens: int = 512,  # tool calls need room for JSON arguments
    ) -> None:
        from openai import OpenAI  # imported here so env-only workers don't pay for it

        self.base_url, self.model, self.temperature = base_url, model, temperature
        self.max_tokens, self.retries, self.seed = max_tokens, retries, seed
        self.tool_max_tokens = tool_max_tokens
        self._client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
        self.last_latency_s = 0.0
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}  # running totals, read by evaluators

    def begin(self, env, task) -> None:
        self._task = task

    def sampling(self, step: int, attempt: int, tools: bool) -> dict[str, Any]:
        """max_tokens, temperature and seed of one request: greedy (or the set temperature) on the first try,
        warmer on retries; seeded per (task, step, attempt) so sampled runs are reproducible and retries differ.
        bench/rollout.py's in-process policy asks the engine with exactly these."""
        out: dict[str, Any] = {"max_tokens": max(self.max_tokens, self.tool_max_tokens) if tools else self.max_tokens,
                               "temperature": self.temperature if attempt == 0 else max(self.temperature, 0.7)}
        seed = zlib.crc32(f"{self._task.task_id}/{step}/{attempt}/{self.seed}".encode()) if self.temperature > 0 else None
        if seed is not None or attempt > 0:
            out["seed"] = seed if seed is not None else attempt
        return out

    def act(self, messages, env, step, attempt):
        import openai
        from openai.types.chat import ChatCompletion

        space = action_space_of(env)
        tools = space.tools if space.kind == "tools" else None
        kwargs: dict[str, Any] = dict(model=self.model, messages=messages, **self.sampling(step, attempt, bool(tools)))
        if tools:
            kwargs["tools"] = tools
        delay, last_error = 0.5, None
        for tried in range(self.retries + 1):
            if tried:
                time.sleep(delay)  # back off before each retry, not after the last try
                delay = min(delay * 2, 8.0)
            t0 = time.perf_counter()
            try:
                # the SDK's transport, errors and response types without `create()`'s parameter transform,
                # which walks every message through TypedDict introspection: ~4 ms of CPU per step, more than
                # half a rollout actor's time (bench/rollout.py); our messages are wire-format JSON already
                out = self._client.post("/chat/completions", body=kwargs, cast_to=ChatCompletion)
                self.last_latency_s = time.perf_counter() - t0
                for key in self.usage:
                    self.usage[key] += int(getattr(out.usage, key, 0) or 0)
                message = out.choices[0].message
                if not tools:
                    return message.content or ""
                calls = [tool_call(tc.function.name, tc.function.arguments, tc.id) for tc in message.tool_calls or []]
                return PolicyOutput(content=message.content or "", tool_calls=calls)
            except (openai.BadRequestError, openai.AuthenticationError, openai.PermissionDeniedError,
                    openai.NotFoundError, openai.UnprocessableEntityError) as e:
                # The server answered and said no: retrying the same request cannot help.
                raise PolicyError(f"model server {self.base_url} rejected the request for model {self.model!r} "
                                  f"(HTTP {e.status_code}): {_error_text(e)}") from None
            except EpisodeTimeout:  # the episode's own limit, not the server's fault: no retry
                raise
            except openai.APITimeoutError:
                last_error = f"no answer within {self._client.timeout}s"
            except openai.APIConnectionError as e:
                last_error = f"unreachable ({e.__cause__ or e}); is the server running at {self.base_url}?"
            except Exception as e:  # timeouts, 5xx, 429: back off and retry
                last_error = f"{type(e).__name__}: {e}"
        raise PolicyError(f"model server {self.base_url} failed after {self.retries + 1} tries: {last_error}")


def _error_text(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    return str(e)[:300]


class TakeoverPolicy:
    """DAgger's data, one expert intervention per rollout: the model acts for a random prefix of
    0..max_prefix steps (fixed by seed and task), then the environment's expert takes over from the state
    the model left and finishes the episode. Its steps are the expert's labels for the states the model
    itself reaches (a wrong turn, a loop) that expert demonstrations never show. `actor` names who chose
    the step just taken; the record keeps it per step (row `policy`), and training learns only the
    expert's steps of such an episode, the model's staying as the context it saw (training/samples.py)."""

    name = "takeover"

    def __init__(self, model: Policy, seed: int = 0, max_prefix: int = 40) -> None:
        self.model, self._seed, self._max_prefix = model, seed, max_prefix  # model: a ModelPolicy (any Policy)
        self.actor = ""

    def begin(self, env, task) -> None:
        self.model.begin(env, task)
        self._expert = None
        self.prefix = random.Random(f"takeover/{self._seed}/{task.task_id}").randint(0, self._max_prefix)

    @property
    def usage(self) -> dict:
        return getattr(self.model, "usage", {})

    def act(self, messages, env, step, attempt):
        if step < self.prefix:
            self.actor = self.model.name
            return self.model.act(messages, env, step, attempt)
        if self._expert is None:  # built on the state the model left: the bot plans from what it sees now
            self._expert = env.make_expert()
        self.actor = "expert"
        return _expert_output(self._expert.act(), env)
