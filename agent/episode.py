"""The one episode runner, used by collection, evaluation and the agent API alike.

    observe → memory → render prompt → policy → ground → safety → execute → feedback

until the environment verifies success, the agent claims completion (done / give up), the
environment ends the episode, or a step/time limit hits. The agent's claim and the environment's
verdict are kept apart, step by step.

The runner knows action spaces, not environments: the env declares its space (`action_space()`,
default a text space over `action_names()`). Text spaces render with training's prompt renderer
and ground to one action name; tool spaces keep an OpenAI conversation and ground tool calls
(several per step, executed in order) or a plain-text reply (the space's `message_action`). In
spaces with `turns` a claim closes a turn and the environment decides whether the episode goes on.

Each part of the harness (memory, feedback, retry, grounding, safety, focus) can be switched off with
`RunnerConfig(harness_off=[...])` (`lam eval --ablate`); what the whole harness would have refused is
still counted then (`StepLog.ungrounded`, `StepLog.unsafe`), so every arm is measured by one yardstick.

    ep = run_episode(make_env("babyai"), ExpertPolicy(), Task("babyai", "BabyAI-GoToLocal-v0", 0), RunnerConfig())
"""
from __future__ import annotations

import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from agent.conversation import conversation_for, output_text
from agent.grounding import Grounding, ground, ground_exact
from agent.memory import Memory, MemoryConfig, with_memory
from agent.policies import EpisodeTimeout, Policy, PolicyError, PolicyOutput, tool_call
from agent.runner_config import RunnerConfig  # defined there; imported from here too (public path)
from agent.safety import SafetyGuard
from envs.base import ActionSpace, Environment, StepResult, Task, action_space_of


def episode_id(task: Task, prefix: str = "", trial: int | None = None) -> str:
    """The one episode id format: LEVEL-SEED as datasets store it (`lam data show --episode`); evaluation
    puts its run name in front and the trial behind: NAME-LEVEL-SEED-tK. Sessions use their own id."""
    eid = f"{prefix}-{task.level}-{task.seed}" if prefix else f"{task.level}-{task.seed}"
    return eid if trial is None else f"{eid}-t{trial}"


@dataclass
class StepLog:
    step: int
    state: str
    prev_feedback: str
    raw_output: str
    action: str  # grounded action ("" when grounding failed on every try); tool calls as <tool_call> text
    valid: bool
    retries: int
    feedback: str
    reward: float
    verified_success: bool
    claimed_done: bool  # this step's claim "done" ended the episode
    blocked: bool = False  # forbidden (or denied confirmation) by the safety guard
    latency_s: float = 0.0
    claim: str = ""  # "done" | "give_up" | "": what the output claimed (per turn in multi-turn envs)
    tool_calls: list[dict] = field(default_factory=list)  # tool spaces: [{"id", "name", "arguments"}]
    tool_results: list[str] = field(default_factory=list)  # tool spaces: one result per call
    confirmed: int = 0  # actions that needed confirmation and got it
    memory: str = ""  # the memory text the prompt carried ("" when memory is off)
    info: dict = field(default_factory=dict)  # the environment's verdict details (e.g. per-turn checks)
    # harness switched off (RunnerConfig.harness_off): the executed output the full grounding rejects, and
    # the executed actions the guard would have blocked
    ungrounded: bool = False
    unsafe: int = 0
    # exactly what the policy was given for this step's first attempt (the record keeps it; training
    # renders its samples from it): chat messages, and the OpenAI tools of a tool space ([] in text)
    messages: list[dict] = field(default_factory=list)
    tools: list[dict] = field(default_factory=list)
    # who chose this step's action where a policy hands over mid-episode (agent/policies.py TakeoverPolicy:
    # "model" then "expert"); "" for every other policy: the episode's policy acted throughout
    actor: str = ""


@dataclass
class Episode:
    episode_id: str
    task: Task
    request: str
    policy: str
    steps: list[StepLog] = field(default_factory=list)
    success: bool = False  # the environment's verdict
    claimed_done: bool = False  # the agent's final claim was "done"
    end_reason: str = ""  # success | claimed_done | gave_up | env_terminated | step_limit | time_limit | policy_error | cancelled
    error: str = ""
    wall_s: float = 0.0
    claim: str = ""  # the agent's final claim: "done" | "give_up" | ""
    progress: float = 0.0  # the environment's own partial-completion measure at the end
    examples: list[dict] = field(default_factory=list)  # long-term memory retrieved for this episode
    task_key: str = ""  # the task's exact name (BFCL: its entry id), see task_key_of
    final_state: str = ""  # the state the last executed action left (what an outcome verifier looks at)

    @property
    def invalid_actions(self) -> int:
        return sum(s.retries + (0 if s.valid else 1) for s in self.steps)

    @property
    def blocked_actions(self) -> int:
        return sum(s.blocked for s in self.steps)

    @property
    def unsafe_actions(self) -> int:
        return sum(s.unsafe for s in self.steps)

    @property
    def false_success(self) -> bool:
        return self.claimed_done and not self.success

    def transcript(self) -> dict:
        """Everything that happened, JSON-ready (the agent API and reports show it)."""
        out = asdict(self)
        out["task"] = {**asdict(self.task), "task_id": self.task.task_id}
        out.update(invalid_actions=self.invalid_actions, blocked_actions=self.blocked_actions,
                   false_success=self.false_success)
        return out


@contextmanager
def _time_limit(seconds: float | None):
    # SIGALRM interrupts code that never returns (the bot's planner on some seeds); only the
    # main thread may use it, elsewhere the limit is checked between steps.
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise EpisodeTimeout()

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class EpisodeRunner:
    """One episode, step by step: `run()` to the end, or `start()` then `advance()` per step (API)."""

    def __init__(self, env: Environment, policy: Policy, task: Task, cfg: RunnerConfig,
                 episode_id: str | None = None, memory: Memory | None = None, guard: SafetyGuard | None = None):
        self.env, self.policy, self.task, self.cfg = env, policy, task, cfg
        self.episode_id = episode_id or uuid.uuid4().hex[:16]
        mem_cfg = MemoryConfig(**cfg.memory) if cfg.memory else MemoryConfig()
        self.memory = memory if memory is not None else (Memory(mem_cfg) if mem_cfg.enabled else None)
        if not cfg.has("memory"):
            self.memory = None
        self.guard = guard or SafetyGuard(cfg.safety, cfg.confirm)
        self.finished, self._begun = False, False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Episode:
        self.t0 = time.perf_counter()
        self.obs = self.env.reset(self.task)
        self.ep = Episode(episode_id=self.episode_id, task=self.task, request=self.obs.request, policy=self.policy.name,
                          task_key=task_key_of(self.task, self.obs))
        remembers = self.cfg.has("memory")
        self.conv = conversation_for(action_space_of(self.env), self.obs.request,
                                     self.cfg.history_window if remembers else 1, recent_only=not remembers,
                                     focus=self.cfg.has("focus"))
        self.first_state, self.feedback, self.step_index, self.progress = self.obs.state, "", 0, 0.0
        return self.ep

    def begin(self, examples: list[dict] | None = None) -> None:
        """Before the first step: the policy's and memory's start of the episode. `examples`: the
        long-term memory retrieved when a rebuilt session first began (its store may have grown since)."""
        self._begun = True
        self.policy.begin(self.env, self.task)
        if self.memory is not None:
            self.memory.begin(self.env.name, self.episode_id, self.obs.request, self.obs.state)
            if examples is not None:
                self.memory.examples = examples
            self.ep.examples = [{k: x[k] for k in ("episode_id", "score", "request")} for x in self.memory.examples]

    def run(self) -> Episode:
        self.start()
        try:
            with _time_limit(self.cfg.time_limit_s):
                self.begin()
                while not self.finished:
                    self._step()
        except EpisodeTimeout:
            self.stop("time_limit")
        except PolicyError as e:
            self.stop("policy_error", str(e))
        return self.finish()

    def advance(self) -> StepLog | None:
        """One step (the API's stepping mode); None when the episode had already ended."""
        try:
            if not self._begun:
                self.begin()
            n = len(self.ep.steps)
            self._step()
            return self.ep.steps[-1] if len(self.ep.steps) > n else None
        except EpisodeTimeout:
            self.stop("time_limit")
        except PolicyError as e:
            self.stop("policy_error", str(e))
        return None

    def stop(self, reason: str, error: str = "") -> None:
        if not self.finished:
            self.finished, self.ep.end_reason, self.ep.error = True, reason, error

    def finish(self) -> Episode:
        ep = self.ep
        ep.success, ep.progress = self.env.success, self.progress
        ep.final_state = self.obs.state
        ep.wall_s = time.perf_counter() - self.t0
        if self.memory is not None:
            actions = [s.action for s in ep.steps if s.valid and not s.blocked]
            self.memory.remember(self.env.name, ep.episode_id, ep.request, self.first_state, actions, ep.success)
        return ep

    # -- one step ----------------------------------------------------------------------------
    def _step(self) -> None:
        if self.finished:
            return
        if self.step_index >= self.cfg.max_steps:
            self.stop("step_limit")
            return
        if self.cfg.time_limit_s and time.perf_counter() - self.t0 > self.cfg.time_limit_s:
            raise EpisodeTimeout()
        env, step, obs = self.env, self.step_index, self.obs
        space = action_space_of(env)
        tells = self.cfg.has("feedback")  # off: the policy is never told what happened or why
        self.conv.observe(obs, self.feedback if tells else "")
        mem_text = self.memory.text() if self.memory is not None else ""
        messages = with_memory(self.conv.render(space), mem_text)
        first_messages = [dict(m) for m in messages]  # as given, whatever a policy does to its copy
        output, g, retries, latency = "", Grounding(error="no output"), 0, 0.0
        last_try = self.cfg.max_retries if self.cfg.has("retry") else 0
        for attempt in range(last_try + 1):
            t_act = time.perf_counter()
            output = self.policy.act(messages, env, step, attempt)
            latency += time.perf_counter() - t_act
            g = ground(output, space, env) if self.cfg.has("grounding") else ground_exact(output, space)
            if g.ok:
                break
            retries = attempt + 1 if attempt < last_try else attempt
            if tells:
                messages = messages + self.conv.retry(output, g.error)
        raw = output_text(output)
        shown = self.feedback if tells else ""  # the feedback this step's prompt carried
        log = StepLog(step, obs.state, shown, raw, "", False, retries, "", 0.0, env.success, False,
                      latency_s=latency, memory=mem_text, tool_calls=g.calls, messages=first_messages,
                      tools=list(space.tools) if space.kind == "tools" else [],
                      actor=getattr(self.policy, "actor", ""))
        self.ep.steps.append(log)
        self.step_index += 1
        if not g.ok:
            log.feedback = self.feedback = g.error
            if tells or space.kind == "text":  # text: the step's turn stays, its action empty
                self.conv.record(output if space.kind == "tools" else "", None, [g.error])
            return
        log.valid, log.action = True, action_text(g, space, output)
        log.ungrounded = not self.cfg.has("grounding") and not ground(output, space, env).ok
        results, last = self._execute(g, log)
        # the guard's refusals are feedback; a tool result is what the tool returned
        self.conv.record(log.action, g, results if tells else [r if ran else "" for r, ran in zip(results, self._ran)])
        log.feedback = self.feedback = "\n".join(results)
        if space.kind == "tools":
            log.tool_results = results
        if self.memory is not None:
            self.memory.short.add(step, log.action, log.feedback, obs.state, self.obs.state)
        self._conclude(log, g.claim if last is not None else "", last, space)

    def _execute(self, g: Grounding, log: StepLog) -> tuple[list[str], StepResult | None]:
        results, last = [], None
        self._ran = []  # per result: the action ran (False: the guard refused it, or the episode had ended)
        for action in g.actions:
            may_run, level, why = self.guard.check(self.env, action)
            if not may_run and self.cfg.has("safety"):
                log.blocked = True
                results.append(why)
                self._ran.append(False)
                continue
            log.unsafe += not may_run  # the guard is off: it runs, and is counted
            log.confirmed += level == "confirm" and may_run
            self._ran.append(True)
            last = self.env.step(action)
            self.obs, self.progress = last.observation, last.progress
            results.append(last.feedback)
            log.reward += last.reward
            log.verified_success = last.success
            log.info.update(last.info)
            if last.terminated:  # calls after the end are not run; each still gets an answer
                self._ran += [False] * (len(g.actions) - len(results))
                results += ["not executed: the episode had ended"] * (len(g.actions) - len(results))
                break
        return results, last

    def _conclude(self, log: StepLog, claim: str, last: StepResult | None, space: ActionSpace) -> None:
        log.claim = claim
        # A claim ends the episode, except in turn-based spaces where it closes a turn and the
        # environment says (terminated) whether that was the last one.
        ends_by_claim = bool(claim) and (not space.turns or (last is not None and last.terminated))
        if ends_by_claim:
            self.ep.claim = claim
            log.claimed_done = self.ep.claimed_done = claim == "done"
        if last is not None and last.success:
            self.stop("success")
        elif ends_by_claim:
            self.stop("claimed_done" if claim == "done" else "gave_up")
        elif last is not None and last.terminated:
            self.stop("env_terminated")


def task_key_of(task: Task, obs) -> str:
    """The task's exact name: the environment's own key in the first observation's info ("task_key",
    or BFCL's "entry_id"), else level/seed."""
    info = getattr(obs, "info", None) or {}
    return str(info.get("task_key") or info.get("entry_id") or task.task_id)


def action_text(g: Grounding, space: ActionSpace, output) -> str:
    """The grounded action as one string: the action name in text spaces; in tool spaces the calls as
    Hermes <tool_call> text (what a served model emits to make them) or the closing message."""
    if space.kind == "text":
        return g.actions[0].name
    if not g.calls:
        return g.actions[0].arguments.get("content", "")
    return PolicyOutput(tool_calls=[tool_call(a.name, a.arguments) for a in g.actions]).to_text()


def run_episode(env: Environment, policy: Policy, task: Task, cfg: RunnerConfig, episode_id: str | None = None,
                memory: Memory | None = None) -> Episode:
    return EpisodeRunner(env, policy, task, cfg, episode_id=episode_id, memory=memory).run()
