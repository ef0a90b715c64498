"""The episode runner's settings, defined once: collection, evaluation, the pipeline and the agent API
all build this type (agent/episode.py runs with it).

    cfg = RunnerConfig(max_steps=40, time_limit_s=30.0)
    Fleet(4, "babyai", wire(cfg))  # the dict form crosses Ray and goes into eval's fingerprint

A pydantic model, not a dataclass, because the dict form holds only the fields a caller set
(`exclude_unset`): eval's resume fingerprint and report.json have always carried exactly those, so
a run fingerprinted before still resumes (tests/eval/test_runner_fingerprint.py pins it).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The harness around the policy, part by part (`lam eval --ablate` switches each off; agent/episode.py):
#   memory     agent/memory.py and the conversation's past steps (text: a history window of 1; tools:
#              the requests and the latest call with its results only)
#   feedback   what the runner tells the policy: env feedback lines, grounding errors on a retry or a
#              rejected step, the guard's refusals (tool results themselves stay: they are observations)
#   retry      further tries after an unparseable or invalid output (max_retries is then 0)
#   grounding  agent/grounding.py's parsing and validation: only exact action names (text) or tool calls
#              as written (tools, unchecked) are executed, no aliases, schemas or preconditions
#   safety     the guard (agent/safety.py): nothing is blocked; what it would have blocked is counted
#   focus      text views shown with the lines most relevant to the request last (agent/prompt.py
#              focus_view); off: as the environment wrote them
HARNESS = ("memory", "feedback", "retry", "grounding", "safety", "focus")
Component = Literal["memory", "feedback", "retry", "grounding", "safety", "focus"]


class RunnerConfig(BaseModel):
    # types only: ranges a public caller must keep are the agent API's (agent/api.py), internal runs keep theirs
    model_config = ConfigDict(extra="forbid")

    max_steps: int = 64
    max_retries: int = 2  # extra tries after unparseable/invalid output, with feedback
    history_window: int = 8
    time_limit_s: float | None = None  # wall-clock limit per episode (the bot can loop forever)
    # {"short_term_k": k, "long_term_k": k, "store_path": ...} (agent/memory.py). Off by default, so
    # prompts stay byte-identical to the ones training rendered.
    memory: dict[str, Any] = Field(default_factory=dict)
    # safety levels per action name or per env class, e.g. {"rm": "forbidden", "confirm": "forbidden"}
    safety: dict[str, Literal["allowed", "confirm", "forbidden"]] = Field(default_factory=dict)
    confirm: Literal["approve", "deny"] = "approve"  # what 'confirm' actions get without a person
    # harness components switched off (HARNESS above); [] is the whole harness, as always
    harness_off: list[Component] = Field(default_factory=list)

    def has(self, component: str) -> bool:
        """Whether this harness component is on."""
        return component not in self.harness_off


def wire(runner: RunnerConfig | dict) -> dict:
    """The dict form: only the fields set, in field order. A dict is taken as already in that form
    (bench scripts and tests pass one) and validated, but returned as given, so its bytes stay."""
    if isinstance(runner, RunnerConfig):
        return runner.model_dump(exclude_unset=True)
    RunnerConfig(**runner)
    return dict(runner)
