"""BabyAI frames: minigrid's own RGB render of a recorded episode, re-run from level, seed and actions.

    frames, success = replay_frames("BabyAI-GoToLocal-v0", 3, ["turn right", "go forward"])

The web console (agent/console, `lam view`) shows one frame per step and eval's report.html turns them
into GIFs (eval/replays.py). A replay in plain minigrid, as `envs.babyai.replay` does: what the frames
show is what the recorded actions do in a fresh world, not what the agent's process remembered.
"""
from __future__ import annotations

import gymnasium as gym

from envs.babyai import ACTION_TO_ID, BABYAI_LEVELS


def check_replay(level: str, actions: list[str]) -> None:
    """ValueError naming the first thing a replay of (level, actions) cannot do."""
    if level not in BABYAI_LEVELS:
        raise ValueError(f"unknown BabyAI level {level!r}")
    bad = [a for a in actions if a not in ACTION_TO_ID]
    if bad:
        raise ValueError(f"unknown BabyAI action {bad[0]!r}; valid: {', '.join(ACTION_TO_ID)}")


def replay_frames(level: str, seed: int, actions: list[str], only_last: bool = False) -> tuple[list, bool]:
    """The RGB frames (numpy HxWx3) after reset and after each action, and minigrid's verdict. The
    replay stops where the world ends the episode. `only_last`: render the final state only (a frame costs
    more than a step)."""
    check_replay(level, actions)
    env = gym.make(level, render_mode="rgb_array")
    try:
        env.reset(seed=seed)
        frames, success = ([] if only_last else [env.render()]), False
        for a in actions:
            _, reward, terminated, truncated, _ = env.step(ACTION_TO_ID[a])
            if not only_last:
                frames.append(env.render())
            success = success or (terminated and reward > 0)
            if terminated or truncated:
                break
        if only_last:
            frames.append(env.render())
        return frames, success
    finally:
        env.close()
