"""Episode replays for reports: re-run saved actions in plain minigrid with its RGB render
(`gym.make(level, render_mode="rgb_array")`) and encode the frames as an animated GIF.

The replay is also an independent check: its verdict comes from minigrid alone and is shown next
to the verdict the evaluation recorded.
"""
from __future__ import annotations

import io
from pathlib import Path

from data_collection.store import TrajectoryStore, group_episodes


def render_gif(level: str, seed: int, actions: list[str], size: int = 192, max_frames: int = 48,
               frame_ms: int = 300) -> tuple[bytes, bool]:
    """GIF bytes of the replay and minigrid's verdict for it."""
    import gymnasium as gym
    from PIL import Image

    from envs.babyai import ACTION_TO_ID

    env = gym.make(level, render_mode="rgb_array")
    env.reset(seed=seed)
    frames, success = [env.render()], False
    for a in actions:
        _, reward, terminated, truncated, _ = env.step(ACTION_TO_ID[a])
        frames.append(env.render())
        success = success or (terminated and reward > 0)
        if terminated or truncated:
            break
    env.close()
    if len(frames) > max_frames:  # keep the start and the end, which say the most
        frames = frames[: max_frames // 2] + frames[-(max_frames // 2):]
    images = []
    for f in frames:
        img = Image.fromarray(f)
        img.thumbnail((size, size))
        images.append(img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64))
    images += [images[-1]] * 3  # linger on the final state
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return buf.getvalue(), success


def pick_episodes(root: Path, events: dict[str, dict], per_kind: int = 1) -> list[tuple[str, list[dict]]]:
    """A few telling episodes of one store: a false success, a failure without a claim, a success."""
    eps = [ep for ep in group_episodes(TrajectoryStore(root).read_records("episodes")) if ep[0]["step"] >= 0]
    eps.sort(key=lambda ep: ep[0]["episode_id"])
    kinds = {
        "false success": lambda ep: any(r["claimed_done"] for r in ep) and not ep[-1]["episode_success"],
        "failure": lambda ep: not ep[-1]["episode_success"] and not any(r["claimed_done"] for r in ep),
        "success": lambda ep: ep[-1]["episode_success"],
    }
    out = []
    for kind, pred in kinds.items():
        out += [(kind, ep) for ep in [e for e in eps if pred(e)][:per_kind]]
    return out


def executed_actions(ep: list[dict], events: dict) -> list[str]:
    """Actions that reached the environment: grounded, not blocked, not dropped by action_fail."""
    ignored = {e["step"] for e in events.get("events", []) if e["kind"] == "action_ignored"}
    executed = [r["action"] for r in ep if r["action"] and not r["blocked"]]
    return [a for i, a in enumerate(executed) if i not in ignored]


def store_replays(root: Path, per_kind: int = 1) -> list[dict]:
    """[{kind, episode_id, level, seed, trial, claimed, verified, replay_verdict, end_reason, steps, gif}]"""
    from eval.evaluator import read_events

    events = read_events(root)
    out = []
    for kind, ep in pick_episodes(root, events, per_kind):
        meta = events.get(ep[0]["episode_id"], {})
        gif, verdict = render_gif(ep[0]["level"], ep[0]["seed"], executed_actions(ep, meta))
        out.append({
            "kind": kind, "episode_id": ep[0]["episode_id"], "level": ep[0]["level"], "seed": ep[0]["seed"],
            "trial": meta.get("trial", 0), "claimed": any(r["claimed_done"] for r in ep),
            "verified": bool(ep[-1]["episode_success"]), "replay_verdict": verdict,
            "end_reason": ep[-1]["end_reason"], "steps": len(ep), "mission": ep[0]["request"], "gif": gif,
            "ignored": sum(e["kind"] == "action_ignored" for e in meta.get("events", [])),
        })
    return out
