"""Rebuild a live session's episode from its record after the process that ran it died.

    runner, diverged = rebuild(runner, steps, digests)   # runner: fresh env + policy + task, not started

A fresh environment is reset to the session's task and every recorded step is re-run through the one
episode runner, the policy's recorded outputs in place of new ones (agent/replay.recorded_output), so
the conversation, short-term memory, feedback and step index come back as an uninterrupted run has
them. Before each step the rebuilt observation must equal the recorded one; after it the conversation
the policy was given, the grounded action and its feedback must equal the record, and the
environment's state digest (envs/base.py `state_digest`) the one stored with the step. Policies with
state of their own (the expert's plan, a random policy's draws, a script's position) are asked again
at every step, and their answer must be the recorded one; a model is not asked (it is stateless
between calls, and asking again costs time and may differ).

Any mismatch is a divergence: (step, reason), and the session ends `interrupted` with both.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from agent.conversation import output_text
from agent.episode import EpisodeRunner, StepLog
from agent.replay import recorded_output
from envs.base import rebuildable


@dataclass
class Divergence:
    step: int  # the recorded step that did not come back (len(steps) when the end state differs)
    reason: str


class _Diverged(Exception):
    def __init__(self, step: int, reason: str) -> None:
        super().__init__(reason)
        self.step = step


class ReplayingPolicy:
    """The session's policy during a rebuild: gives each recorded step's output (tool call ids included);
    a policy with state of its own is still asked, on every attempt, and must agree with the record."""

    def __init__(self, inner, steps: list[dict]) -> None:
        self.inner, self.steps, self.name = inner, steps, inner.name
        self.asks = getattr(inner, "replay_by_asking", True)

    def begin(self, env, task) -> None:
        self.inner.begin(env, task)

    def act(self, messages, env, step, attempt):
        rec = self.steps[step]
        if not self.asks:
            return recorded_output(rec)
        out = self.inner.act(messages, env, step, attempt)
        if attempt < rec["retries"]:  # an attempt grounding rejected the first time: it must be rejected again
            return out
        if output_text(out) != rec["raw_output"]:
            raise _Diverged(step, f"the {self.name} policy now answers {output_text(out)[:120]!r}, "
                                  f"the record says {rec['raw_output'][:120]!r}")
        return recorded_output(rec)


def _plain(value):
    return json.loads(json.dumps(value, default=str))  # as the store keeps it


def rebuild(runner: EpisodeRunner, steps: list[dict], digests: list[str | None],
            examples: list[dict] | None = None) -> Divergence | None:
    """Start `runner` and re-run the recorded `steps` (StepLog dicts, in order) on it; None when all came
    back. The runner then holds the recorded StepLogs and its real policy, ready for the next step."""
    env, inner = runner.env, runner.policy
    if not rebuildable(env):
        return Divergence(0, f"environment {env.name!r} does not declare that it can be rebuilt from its actions")
    if [s["step"] for s in steps] != list(range(len(steps))):
        return Divergence(0, "the recorded steps are not numbered 0..n-1")
    try:
        runner.start()
        runner.policy = ReplayingPolicy(inner, steps)
        runner.begin(examples)
        for k, rec in enumerate(steps):
            if runner.finished:
                raise _Diverged(k, f"the rebuilt episode ended ({runner.ep.end_reason}) before step {k}")
            if runner.obs.state != rec["state"]:
                raise _Diverged(k, f"the observation before step {k} differs from the recorded one")
            log = runner.advance()
            if log is None:
                raise _Diverged(k, f"step {k} did not run ({runner.ep.end_reason}: {runner.ep.error})")
            for name in ("messages", "action", "valid", "feedback", "tool_results"):
                if _plain(getattr(log, name)) != rec.get(name):
                    raise _Diverged(k, f"step {k}: the rebuilt {name} differs from the recorded one")
            if k < len(digests) and digests[k] is not None and env.state_digest() != digests[k]:
                raise _Diverged(k, f"step {k}: the environment's state digest {env.state_digest()} differs from "
                                   f"the recorded {digests[k]}")
    except _Diverged as d:
        return Divergence(d.step, str(d))
    except Exception as e:  # the environment or policy broke while rebuilding: it cannot come back
        return Divergence(len(runner.ep.steps) - 1 if getattr(runner, "ep", None) else 0,
                          f"the rebuild raised {type(e).__name__}: {e}")
    finally:
        runner.policy = inner
    runner.ep.steps = [StepLog(**s) for s in steps]  # the transcript exactly as recorded (latencies, retries)
    return None
