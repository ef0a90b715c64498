"""BFCL multi-turn tool use (package `bfcl-eval`) as a lam-stack environment, with gold-call replay
as its expert.

    lam collect --env bfcl --levels multi_turn_base,multi_turn_miss_func --episodes 640 --out runs/bfcl

Task("bfcl", level=<category>, seed): categories multi_turn_base / _miss_func / _miss_param /
_long_context, 200 entries each. Split "all" addresses entry `seed` directly; "train"/"test" map the
registry's seed ranges onto disjoint entry sets (entry i is test when i % 5 == 4).

- request: the user's turns; each turn arrives as `Observation.user_messages` when the previous
  one is closed. A plain-text reply (the action "respond") closes the turn, as in BFCL's own loop.
- state: JSON with the turn, the last tool results and the involved APIs' public state summary.
- actions: OpenAI tool calls over the shipped function docs; in miss_func entries the held-out
  functions join the tools at their turn, with the package's "I have updated some more functions"
  user message. Held-out functions stay callable before their turn, as in the package's executor
  (which runs any method of the involved APIs; the ground truth of miss_func 49 calls `tail` two
  turns before it is offered). Turns with empty ground truth (miss_func / miss_param) expect no
  call: ask, or say it cannot be done.
- verdict: the package's checker (state + response check) per turn on the prefix of turns, and per
  task on all turns. The agent never sees it.
"""
from __future__ import annotations

from envs import bfcl_data as data
from envs.base import Action, ActionSpace, Observation, StepResult, Task, digest

MESSAGE = "respond"  # the action a plain-text reply grounds to; closes the current turn
TEST_EVERY = 5  # entry i is a test entry when i % TEST_EVERY == TEST_EVERY - 1
ENTRIES_PER_CATEGORY = 200

# Calls with effects outside a read: the safety guard asks for confirmation by default; an agent
# config can forbid them (e.g. {"confirm": "forbidden"} or {"rm": "forbidden"}).
DESTRUCTIVE = {
    "rm": "file removal", "rmdir": "file removal",
    "echo": "overwrite", "mv": "overwrite", "cp": "overwrite",
    "place_order": "selling/buying", "withdraw_funds": "selling/buying", "fund_account": "selling/buying",
    "send_message": "sending", "delete_message": "sending", "post_tweet": "sending", "retweet": "sending",
    "comment": "sending", "mention": "sending",
    "book_flight": "booking", "purchase_insurance": "booking",
    "cancel_booking": "cancelling", "cancel_order": "cancelling", "close_ticket": "cancelling",
}


# The shipped ground truth of entry 173 (every category) calls close_ticket(ticket_id='ticket_001')
# although the doc says integer; the API answers "not found" and the checker expects exactly that.
# Grounding accepts a string there too, so gold replay passes; every other argument is checked as
# documented. Schemas after the OpenAI conversion (envs/bfcl_data.openai_tools).
_VALIDATION_WIDENED = {("close_ticket", "ticket_id"): ["integer", "string"]}


def _validation(tools: list[dict]) -> dict[str, dict]:
    out = {}
    for t in tools:
        fn = t["function"]
        for (name, arg), types in _VALIDATION_WIDENED.items():
            if fn["name"] == name and arg in fn["parameters"].get("properties", {}):
                params = out.setdefault(name, {**fn["parameters"], "properties": dict(fn["parameters"]["properties"])})
                params["properties"][arg] = {**params["properties"][arg], "type": types}
    return out


def entry_index(task: Task) -> int:
    if task.split == "all":
        return task.seed
    from envs.splits import seed_range

    lo, _ = seed_range(task.split)
    ids = [i for i in range(ENTRIES_PER_CATEGORY) if (i % TEST_EVERY == TEST_EVERY - 1) == (task.split == "test")]
    return ids[(task.seed - lo) % len(ids)]


def all_tasks(levels=data.CATEGORIES) -> list[Task]:
    """Every entry of the given categories, addressed directly (split "all")."""
    return [Task("bfcl", data.category_of(c), i, "all") for c in levels for i in range(ENTRIES_PER_CATEGORY)]


class BfclEnv:
    name = "bfcl"
    rebuildable = True  # the package's backends are deterministic in (entry, executed calls)

    def __init__(self) -> None:
        data.require()
        self._namespace = ""
        self._entry: dict | None = None
        self._success = False
        self.task: Task | None = None

    # -- Environment protocol ---------------------------------------------------------
    def reset(self, task: Task) -> Observation:
        self.close()
        self._entry = data.entry(task.level, entry_index(task))
        self._namespace = data.new_namespace()
        _, self._instances = data.execute([], self._entry, self._namespace)
        self.task = task
        self.turn, self.done, self._success = 0, False, False
        self.calls: list[list[str]] = [[]]  # executed call strings per turn (what the checker sees)
        self.turn_passed: list[bool] = []
        self.messages: list[str] = []  # the agent's closing message per turn
        self._available = list(self._entry["function"])  # documented (offered as tools) so far
        held_out = [f for fs in self._entry.get("missed_function", {}).values() for f in fs]
        self._callable = {f["name"]: f for f in self._available + held_out}
        self._held_out_schemas = {t["function"]["name"]: t["function"]["parameters"] for t in data.openai_tools(held_out)}
        self._tools_cache: tuple[tuple, list] | None = None
        questions = self._entry["question"]
        self.request = "\n".join(self._turn_messages(t)[0] for t in range(len(questions)))
        return self._observe([], self._turn_messages(0))

    def step(self, action: Action) -> StepResult:
        """Never raises: anything that goes wrong comes back as feedback (BFCL's "Error ..." strings)."""
        if self.done:
            return self._result("the conversation is over; nothing was executed", [])
        if action.name == MESSAGE:
            return self._close_turn(str(action.arguments.get("content", "")))
        if action.name not in self._callable:
            return self._result(f"Error during execution: unknown function {action.name!r}", [])
        call = data.call_string(action.name, action.arguments)
        try:
            results, self._instances = data.execute([call], self._entry, self._namespace)
            result = results[0]
        except Exception as e:  # the package catches errors inside a call; this guards its setup code
            result = f"Error during execution: {type(e).__name__}: {e}"
        self.calls[self.turn].append(call)
        return self._result(result, [result])

    def action_names(self) -> list[str]:
        """Offered functions first, then held-out ones (callable, not yet documented)."""
        if not self._entry:
            return []
        offered = [f["name"] for f in self._available]
        return offered + [n for n in self._callable if n not in offered]

    def action_space(self) -> ActionSpace:
        key = tuple(f["name"] for f in self._available) if self._entry else ()
        if self._tools_cache is None or self._tools_cache[0] != key:
            self._tools_cache = (key, data.openai_tools(self._available) if self._entry else [])
        tools = self._tools_cache[1]
        validation = {n: p for n, p in self._held_out_schemas.items() if n not in key} if self._entry else {}
        validation.update(_validation(tools))
        return ActionSpace(kind="tools", names=self.action_names(), tools=tools, message_action=MESSAGE, turns=True,
                           validation=validation)

    def precondition(self, action: Action) -> str:
        return "the conversation is over; start a new episode" if self.done else ""

    def action_safety(self, action: Action) -> str:
        return "confirm" if action.name in DESTRUCTIVE else "allowed"

    def make_expert(self) -> "GoldReplayExpert":
        return GoldReplayExpert(self)

    @property
    def success(self) -> bool:
        return self._success

    def state_digest(self) -> str:
        """The turn, every executed call, the closing messages, the verdicts so far and the APIs' state."""
        return digest(self.turn, self.calls, self.messages, self.turn_passed, self.done, self._success,
                      data.state_summary(self._instances))

    def close(self) -> None:
        if self._namespace:
            data.release(self._namespace)
            self._namespace = ""

    # -- helpers -----------------------------------------------------------------------
    @property
    def entry(self) -> dict:
        return self._entry

    @property
    def n_turns(self) -> int:
        return len(self._entry["question"])

    def _turn_messages(self, turn: int) -> list[str]:
        if str(turn) in self._entry.get("missed_function", {}):
            return [data.HOLDOUT_TURN_PROMPT]  # the package's holdout turn has no user message of its own
        return [m["content"] for m in self._entry["question"][turn]]

    def _close_turn(self, content: str) -> StepResult:
        k, gold = self.turn, self._entry["ground_truth"][self.turn]
        self.messages.append(content)
        verdict = data.turn_without_calls(self.calls[k]) if not gold else data.check(self._entry, self.calls, k + 1)
        self.turn_passed.append(bool(verdict["valid"]))
        info = {"turn": k, "turn_passed": bool(verdict["valid"]), "turn_check": _brief(verdict)}
        if k + 1 == self.n_turns:
            final = verdict if gold else data.check(self._entry, self.calls)
            self.done, self._success = True, bool(final["valid"])
            info["task_check"] = _brief(final)
            return self._result("", [], info=info, reward=1.0 if self._success else 0.0)
        self.turn += 1
        self.calls.append([])
        missed = self._entry.get("missed_function", {}).get(str(self.turn))
        if missed:
            self._available.extend(missed)
        return self._result("", [], info=info, user_messages=self._turn_messages(self.turn))

    def _progress(self) -> float:
        passed = 0
        for ok in self.turn_passed:
            if not ok:
                break
            passed += 1
        return passed / self.n_turns

    def _result(self, feedback: str, results: list[str], info: dict | None = None, reward: float = 0.0,
                user_messages: list[str] | None = None) -> StepResult:
        return StepResult(observation=self._observe(results, user_messages or []), reward=reward, feedback=feedback,
                          success=self._success, terminated=self.done, progress=self._progress(), info=info or {})

    def _observe(self, results: list[str], user_messages: list[str]) -> Observation:
        state = {"turn": self.turn, "tool_results": results, "apis": data.state_summary(self._instances)}
        info = {"entry_id": self._entry["id"], "turn": self.turn, "n_turns": self.n_turns}
        return Observation(request=self.request, state=data.dumps(state), info=info, user_messages=user_messages)


def _brief(verdict: dict) -> dict:
    return {k: verdict[k] for k in ("valid", "error_type", "error_message") if k in verdict}


ASK_MESSAGE = "I cannot complete this request: a required function or parameter is missing. Please provide it."
DONE_MESSAGE = "Done: the request is complete."


class GoldReplayExpert:
    """Replays the ground truth: each turn's gold calls in one reply, then a closing message; turns
    with empty ground truth get a message asking for what is missing."""

    def __init__(self, env: BfclEnv) -> None:
        self._env = env
        self._emitted: set[int] = set()

    def act(self) -> list[Action] | str:
        env = self._env
        if env.done:
            return DONE_MESSAGE
        k = env.turn
        if k in self._emitted:
            return DONE_MESSAGE
        self._emitted.add(k)
        gold = env.entry["ground_truth"][k]
        if not gold:
            return ASK_MESSAGE
        return [Action(*data.parse_gold_call(c, env.entry["involved_classes"])) for c in gold]
