"""FROZEN copy of the episode runner as of commit 28d0a72 (text actions only), kept as the reference
the generalized runner must match byte for byte on BabyAI: a BabyAI model was trained on exactly
these prompts and this grounding/retry/claim behaviour. Do not edit; tests/agent/test_text_runner_unchanged.py.
"""
from __future__ import annotations

import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

from agent.grounding import ground_text_action
from agent.policies import Policy, PolicyError
from agent.prompt import Turn, render_messages
from envs.base import Environment, Task


@dataclass
class RunnerConfig:
    max_steps: int = 64
    max_retries: int = 2  # extra tries after unparseable/invalid output, with feedback
    history_window: int = 8
    time_limit_s: float | None = None  # wall-clock limit per episode (the bot can loop forever)


@dataclass
class StepLog:
    step: int
    state: str
    prev_feedback: str
    raw_output: str
    action: str  # grounded action, "" when grounding failed on every try
    valid: bool
    retries: int
    feedback: str
    reward: float
    verified_success: bool
    claimed_done: bool
    blocked: bool = False  # forbidden by the safety guard
    latency_s: float = 0.0


@dataclass
class Episode:
    episode_id: str
    task: Task
    request: str
    policy: str
    steps: list[StepLog] = field(default_factory=list)
    success: bool = False  # the environment's verdict
    claimed_done: bool = False  # the agent's claim
    end_reason: str = ""  # success | claimed_done | env_terminated | step_limit | time_limit | policy_error
    error: str = ""
    wall_s: float = 0.0

    @property
    def invalid_actions(self) -> int:
        return sum(s.retries + (0 if s.valid else 1) for s in self.steps)

    @property
    def false_success(self) -> bool:
        return self.claimed_done and not self.success


class EpisodeTimeout(Exception):
    pass


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


def run_episode(env: Environment, policy: Policy, task: Task, cfg: RunnerConfig, episode_id: str | None = None) -> Episode:
    t0 = time.perf_counter()
    obs = env.reset(task)
    ep = Episode(episode_id=episode_id or uuid.uuid4().hex[:16], task=task, request=obs.request, policy=policy.name)
    names = env.action_names()
    turns: list[Turn] = []
    feedback = ""
    try:
        with _time_limit(cfg.time_limit_s):
            policy.begin(env, task)
            for step in range(cfg.max_steps):
                if cfg.time_limit_s and time.perf_counter() - t0 > cfg.time_limit_s:
                    raise EpisodeTimeout()
                turns.append(Turn(state=obs.state, feedback=feedback))
                messages = render_messages(obs.request, turns, names, cfg.history_window)
                raw, grounded, retries, latency = "", None, 0, 0.0
                for attempt in range(cfg.max_retries + 1):
                    t_act = time.perf_counter()
                    raw = policy.act(messages, env, step, attempt)
                    latency += time.perf_counter() - t_act
                    grounded = ground_text_action(raw, names)
                    if grounded.action is not None:
                        break
                    retries = attempt + 1 if attempt < cfg.max_retries else attempt
                    # The retry sees its bad output and why it was rejected; history stays clean.
                    messages = messages + [
                        {"role": "assistant", "content": raw},
                        {"role": "user", "content": grounded.error},
                    ]
                log = StepLog(step, obs.state, feedback, raw, "", False, retries, "", 0.0, env.success, False, latency_s=latency)
                ep.steps.append(log)
                if grounded.action is None:
                    log.feedback = feedback = grounded.error
                    turns[-1].action = ""
                    continue
                action = grounded.action
                log.valid, log.action = True, action.name
                turns[-1].action = action.name
                if env.action_safety(action) == "forbidden":
                    log.blocked = True
                    log.feedback = feedback = f"action {action.name!r} is forbidden here and was not executed"
                    continue
                result = env.step(action)
                obs, feedback = result.observation, result.feedback
                log.feedback, log.reward, log.verified_success = result.feedback, result.reward, result.success
                if action.name == "done":
                    log.claimed_done = ep.claimed_done = True
                if result.success:
                    ep.end_reason = "success"
                    break
                if ep.claimed_done:
                    ep.end_reason = "claimed_done"
                    break
                if result.terminated:
                    ep.end_reason = "env_terminated"
                    break
            else:
                ep.end_reason = "step_limit"
    except EpisodeTimeout:
        ep.end_reason = "time_limit"
    except PolicyError as e:
        ep.end_reason, ep.error = "policy_error", str(e)
    ep.success = env.success
    ep.wall_s = time.perf_counter() - t0
    return ep
