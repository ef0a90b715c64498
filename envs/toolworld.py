"""A generated tool world over BFCL's executable backends (files, messages, trading, tickets).

    lam collect --env toolworld --levels L1,L2,L3,L4,L5 --episodes 2000 --out runs/tools
    python bench/toolworld_levels.py      # expert and random per level: envs/TOOLWORLD_LEVELS.md

Task("toolworld", level="L1".."L5", seed, split): the world, request and plan come from
envs/toolworld_tasks.py (deterministic in level, split and seed; splits disjoint on every name and
value). The agent gets the request as its user turn and OpenAI tools over the shipped function docs
of the backends the task involves (a curated subset, descriptions without the package's preamble).

- actions: tool calls, run on real `GorillaFileSystem`, `MessageAPI`, `TradingBot` and `TicketAPI`
  instances; a plain-text reply (the action "respond") ends the episode and claims done.
- verdict, never shown to the agent: at the reply, every backend's public state equals the goal
  state (the gold plan run on a copy of the initial state, compared attribute by attribute like
  BFCL's checker), and the reply contains each answer the request asked for.
- expert: runs the same plans live, one call per step, filling each call from the previous results.
- safety: calls BFCL counts as destructive (rm, mv, send_message, place_order, ...) are 'confirm'.
- replay: `replay(level, seed, actions, split)` rebuilds an episode's verdict from its actions.
"""
from __future__ import annotations

import copy
import importlib
import json
from functools import lru_cache

from envs import bfcl_data
from envs.base import Action, ActionSpace, Observation, StepResult, Task, digest
from envs.bfcl import DESTRUCTIVE
from envs.toolworld_tasks import LEVELS, generate, gold_plan
from envs.toolworld_world import APIS, FILES, MESSAGES, TICKETS, TRADING

MESSAGE = "respond"  # the action a plain-text reply grounds to; it ends the episode
MAX_CALLS = 16  # executed calls per episode; the longest gold plan makes 6
# The functions offered per backend: what the tasks need plus a few for looking around.
FUNCTIONS = {
    FILES: ("ls", "find", "cat", "mkdir", "touch", "mv", "rm"),  # no cd: every task works in the root folder
    MESSAGES: ("get_user_id", "send_message", "add_contact"),
    TRADING: ("get_stock_info", "place_order", "add_to_watchlist", "remove_stock_from_watchlist", "get_watchlist"),
    TICKETS: ("create_ticket", "get_ticket"),
}
OWNER = {fn: api for api, fns in FUNCTIONS.items() for fn in fns}
LEVEL_NAMES = tuple(LEVELS)


@lru_cache(maxsize=None)
def _tools(api: str) -> tuple[dict, ...]:
    from bfcl_eval.constants.eval_config import MULTI_TURN_FUNC_DOC_PATH
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    with open(MULTI_TURN_FUNC_DOC_PATH / MULTI_TURN_FUNC_DOC_FILE_MAPPING[api], encoding="utf-8") as f:
        docs = {d["name"]: d for d in map(json.loads, filter(str.strip, f))}
    functions = []
    for name in FUNCTIONS[api]:
        doc = copy.deepcopy(docs[name])
        doc.pop("response", None)
        # "This tool belongs to the Message API, ... Tool description: Send a message." -> "Send a message."
        doc["description"] = doc["description"].split("Tool description: ", 1)[-1]
        functions.append(doc)
    return tuple(bfcl_data.openai_tools(functions))


def _load(configs: dict[str, dict]) -> dict[str, object]:
    """Fresh backend instances holding private copies of the configurations."""
    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

    apis = {}
    for name in APIS:
        obj = getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[name]), name)()
        obj._load_scenario(copy.deepcopy(configs[name]))
        apis[name] = obj
    return apis


def _public(obj) -> dict:
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


def same_state(a, b) -> bool:
    """BFCL's state check: every public attribute equal."""
    return _public(a) == _public(b)


def execute(apis: dict, action: Action):
    """Run one call on its backend; errors come back as {"error": ...}, never raised."""
    api = OWNER.get(action.name)
    if api is None:
        return {"error": f"unknown function {action.name!r}"}
    try:
        return getattr(apis[api], action.name)(**action.arguments)
    except Exception as e:  # wrong argument names or values the backend trips over
        return {"error": f"{action.name}: {type(e).__name__}: {e}"}


def render(result) -> str:
    return "ok" if result is None else json.dumps(result, ensure_ascii=False, default=str)


def run_gold(apis: dict, plan) -> list[str]:
    """Drive a plan on `apis` to its end; a gold call that errors is a generator bug and raises."""
    try:
        action = next(plan)
        while True:
            result = execute(apis, action)
            if isinstance(result, dict) and "error" in result:
                raise RuntimeError(f"gold call {action.to_text()} failed: {result['error']}")
            action = plan.send(result)
    except StopIteration as stop:
        return list(stop.value or [])


def split_of_task(task: Task) -> str:
    """Split "all" (`lam agent audit`, the agent API) addresses a seed directly: its registry range says
    which split's pools it draws from."""
    if task.split != "all":
        return task.split
    from envs.splits import TEST_SEEDS

    return "test" if task.seed >= TEST_SEEDS[0] else "train"


class ToolWorldEnv:
    name = "toolworld"
    rebuildable = True  # worlds are generated from (level, split, seed); the backends are deterministic

    def __init__(self) -> None:
        bfcl_data.require()
        self.task: Task | None = None
        self.done, self._success = False, False

    # -- Environment protocol ---------------------------------------------------------
    def reset(self, task: Task) -> Observation:
        self.task, self.gen = task, generate(task.level, split_of_task(task), task.seed)
        self.apis, self._initial, self.goal = (_load(self.gen.configs) for _ in range(3))
        self.answers = run_gold(self.goal, gold_plan(self.gen.parts))
        self._changed = [a for a in APIS if not same_state(self._initial[a], self.goal[a])]
        if not self._changed:
            raise RuntimeError(f"toolworld task {task.task_id} ({task.split}) changes nothing: a generator bug")
        self.calls, self.done, self._success = 0, False, False
        self.last_result, self.reply = None, ""
        offered = self.gen.apis
        self._space = ActionSpace(kind="tools", names=[t["function"]["name"] for a in offered for t in _tools(a)],
                                  tools=[t for a in offered for t in _tools(a)], claims={MESSAGE: "done"},
                                  message_action=MESSAGE)
        return self._observe([], [self.gen.request])

    def step(self, action: Action) -> StepResult:
        """Never raises: anything that goes wrong comes back as feedback."""
        if self.done:
            return self._result("the episode is over; nothing was executed", [])
        if action.name == MESSAGE:
            return self._close(str(action.arguments.get("content", "")))
        if action.name not in self._space.names:
            return self._result(f"Error during execution: unknown function {action.name!r}", [])
        self.calls += 1
        self.last_result = execute(self.apis, action)
        text = render(self.last_result)
        if self.calls >= MAX_CALLS:
            self.done = True
            return self._result(text + f" (call limit {MAX_CALLS} reached: the episode is over)", [text])
        return self._result(text, [text])

    def action_names(self) -> list[str]:
        return list(self._space.names) if self.task else []

    def action_space(self) -> ActionSpace:
        return self._space

    def precondition(self, action: Action) -> str:
        return "the episode is over; start a new one" if self.done else ""

    def action_safety(self, action: Action) -> str:
        return "confirm" if action.name in DESTRUCTIVE else "allowed"

    def make_expert(self) -> "PlannerExpert":
        return PlannerExpert(self)

    @property
    def success(self) -> bool:
        return self._success

    def close(self) -> None:
        pass

    def state_digest(self) -> str:
        """Every backend's public state, the call count, the reply and the verdict."""
        apis = {a: bfcl_data.summarize(_public(self.apis[a])) for a in APIS}
        return digest(apis, self.calls, self.done, self.reply, self._success, render(self.last_result))

    # -- verdict --------------------------------------------------------------------------
    def state_matches(self) -> bool:
        return all(same_state(self.apis[a], self.goal[a]) for a in APIS)

    def reply_matches(self, reply: str) -> bool:
        return all(ans.lower() in reply.lower() for ans in self.answers)

    def _close(self, reply: str) -> StepResult:
        self.done, self.reply = True, reply
        state_ok, reply_ok = self.state_matches(), self.reply_matches(reply)
        self._success = state_ok and reply_ok
        info = {"state_matches": state_ok, "reply_matches": reply_ok}
        return self._result("", [], info=info, reward=1.0 if self._success else 0.0)

    def _progress(self) -> float:
        """Share of the backends the task changes that already hold their goal state (and the answer)."""
        parts = [same_state(self.apis[a], self.goal[a]) for a in self._changed]
        if self.answers:
            parts.append(self.done and self.reply_matches(self.reply))
        return sum(parts) / len(parts)

    def _result(self, feedback: str, results: list[str], info: dict | None = None, reward: float = 0.0) -> StepResult:
        return StepResult(observation=self._observe(results, []), reward=reward, feedback=feedback,
                          success=self._success, terminated=self.done, progress=self._progress(), info=info or {})

    def _observe(self, results: list[str], user_messages: list[str]) -> Observation:
        apis = {a: bfcl_data.summarize(_public(self.apis[a])) for a in self.gen.apis}
        state = {"calls": self.calls, "tool_results": results, "apis": apis}
        info = {"task_id": self.task.task_id, "split": self.gen.split, "kinds": list(self.gen.kinds)}
        return Observation(request=self.gen.request, state=bfcl_data.dumps(state), info=info,
                           user_messages=user_messages)


def final_reply(answers: list[str]) -> str:
    return f"Done. The answer is {', '.join(answers)}." if answers else "Done."


class PlannerExpert:
    """Plays the gold plan live: each call is filled in from the results of the calls before it (the
    env's `last_result`), one call per step; then the closing reply with the answers it read."""

    def __init__(self, env: ToolWorldEnv) -> None:
        self._env = env
        self._plan = None
        self._answers: list[str] | None = None

    def act(self) -> list[Action] | str:
        if self._answers is not None or self._env.done:
            return final_reply(self._answers or [])
        try:
            if self._plan is None:
                self._plan = gold_plan(self._env.gen.parts)
                return [next(self._plan)]
            return [self._plan.send(self._env.last_result)]
        except StopIteration as stop:
            self._answers = list(stop.value or [])
            return final_reply(self._answers)


def replay(level: str, seed: int, actions: list[Action], split: str = "train") -> bool:
    """The verdict of `actions` (tool calls and the closing "respond") on task (level, seed, split)."""
    env = ToolWorldEnv()
    env.reset(Task("toolworld", level, seed, split))
    for action in actions:
        if env.step(action).terminated:
            break
    return env.success
