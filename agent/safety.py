"""The safety guard: every action passes it before it reaches the environment.

The environment classes each action ('allowed' / 'confirm' / 'forbidden': `env.action_safety`);
the agent's config can tighten that per action name or per class:

    RunnerConfig(safety={"rm": "forbidden", "confirm": "forbidden"}, confirm="approve")

Forbidden actions are blocked, fed back to the policy, counted (`StepLog.blocked`) and never
executed. 'confirm' actions run only when confirmed: "approve" (batch runs: approved and logged),
"deny" (blocked like forbidden), or a callable the agent API can hook to a person.
"""
from __future__ import annotations

from typing import Callable

from envs.base import Action

LEVELS = ("allowed", "confirm", "forbidden")


class SafetyGuard:
    def __init__(self, overrides: dict[str, str] | None = None, confirm: str | Callable[[Action], bool] = "approve"):
        self.overrides = dict(overrides or {})
        for key, level in self.overrides.items():
            if level not in LEVELS:
                raise ValueError(f"safety[{key!r}] = {level!r}: expected one of {', '.join(LEVELS)}")
        if not callable(confirm) and confirm not in ("approve", "deny"):
            raise ValueError(f"confirm = {confirm!r}: expected 'approve', 'deny' or a callable")
        self.confirm = confirm

    def level(self, env, action: Action) -> str:
        """The effective level: a per-name override, else the env's class mapped through overrides."""
        if action.name in self.overrides:
            return self.overrides[action.name]
        base = env.action_safety(action)
        return self.overrides.get(base, base)

    def check(self, env, action: Action) -> tuple[bool, str, str]:
        """(may run, level, feedback when blocked)."""
        level = self.level(env, action)
        if level == "forbidden":
            return False, level, f"action {action.name!r} is forbidden here and was not executed"
        if level == "confirm":
            ok = self.confirm(action) if callable(self.confirm) else self.confirm == "approve"
            if not ok:
                return False, level, f"action {action.name!r} needs confirmation, which was denied; it was not executed"
        return True, level, ""
