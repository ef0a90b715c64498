"""Episode replays: re-run saved actions in a fresh environment and compare verdicts.

    lam eval --replay runs/eval/model        # every saved episode; exit 1 if any verdict differs

An environment's registry entry says how (envs/registry.py): BabyAI replays in plain minigrid, an
independent check whose RGB render also becomes the GIFs of reports; other replayable worlds (BFCL)
re-run the recorded actions through the episode runner on a fresh environment from the registry,
with the evaluation's runner settings and any perturbation that decided what reached the environment.
"""
from __future__ import annotations

import io
from pathlib import Path

from data_collection.schema import StepRow, group_steps
from data_collection.store import TrajectoryStore
from envs.base import Task
from eval.perturb import PerturbedEnv

# Perturbations that decide what reaches the environment; the others only change what the agent
# sees, which a scripted replay ignores. Faults (env_crash, actor_death) hit attempts that were re-run.
_ACTION_CHANNEL = ("action_fail", "forbid")


def render_gif(level: str, seed: int, actions: list[str], size: int = 192, max_frames: int = 48,
               frame_ms: int = 300) -> tuple[bytes, bool]:
    """GIF bytes of the replay and minigrid's verdict for it."""
    from PIL import Image

    from envs.babyai_frames import replay_frames

    frames, success = replay_frames(level, seed, actions)
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


def pick_episodes(root: Path, events: dict[str, dict], per_kind: int = 1) -> list[tuple[str, list[StepRow]]]:
    """A few telling episodes of one store: a false success, a failure without a claim, a success."""
    eps = [ep for ep in group_steps(TrajectoryStore(root).read_rows("episodes")) if ep[0].step >= 0]
    eps.sort(key=lambda ep: ep[0].episode_id)
    kinds = {
        "false success": lambda ep: any(r.claimed_done for r in ep) and not ep[-1].episode_success,
        "failure": lambda ep: not ep[-1].episode_success and not any(r.claimed_done for r in ep),
        "success": lambda ep: ep[-1].episode_success,
    }
    out = []
    for kind, pred in kinds.items():
        out += [(kind, ep) for ep in [e for e in eps if pred(e)][:per_kind]]
    return out


def executed_actions(ep: list[StepRow], events: dict) -> list[str]:
    """Actions that reached the environment: grounded, not blocked, not dropped by action_fail."""
    ignored = {e["step"] for e in events.get("events", []) if e["kind"] == "action_ignored"}
    executed = [r.action for r in ep if r.action and not r.blocked]
    return [a for i, a in enumerate(executed) if i not in ignored]


def store_replays(root: Path, per_kind: int = 1) -> list[dict]:
    """[{kind, episode_id, level, seed, trial, claimed, verified, replay_verdict, end_reason, steps, gif}]"""
    from eval.evaluator import read_events

    events = read_events(root)
    out = []
    for kind, ep in pick_episodes(root, events, per_kind):
        r0, last = ep[0], ep[-1]
        meta = events.get(r0.episode_id, {})
        gif, verdict = render_gif(r0.level, r0.seed, executed_actions(ep, meta))
        out.append({
            "kind": kind, "episode_id": r0.episode_id, "level": r0.level, "seed": r0.seed,
            "trial": meta.get("trial", 0), "claimed": any(r.claimed_done for r in ep),
            "verified": bool(last.episode_success), "replay_verdict": verdict,
            "end_reason": last.end_reason, "steps": len(ep), "mission": r0.request, "gif": gif,
            "ignored": sum(e["kind"] == "action_ignored" for e in meta.get("events", [])),
        })
    return out


def replay_dir(path: str | Path) -> dict:
    """Re-run every saved episode's actions in a fresh environment; count verdict mismatches.
    `path` is one store (with a manifest) or a suite directory holding one store per variant."""
    from eval.evaluator import read_events

    path = Path(path)
    roots = [path] if (path / "manifest.json").exists() else sorted(p.parent for p in path.glob("*/manifest.json"))
    if not roots:
        raise FileNotFoundError(f"{path} holds no evaluation store (no manifest.json in it or its subfolders)")
    checked, mismatched = 0, []
    for root in roots:
        events, setup = read_events(root), TrajectoryStore(root).manifest()["meta"].get("fingerprint", {})
        for ep in group_steps(TrajectoryStore(root).read_rows("episodes")):
            if ep[0].step < 0:  # took no step (infrastructure error): nothing to replay
                continue
            verdict = replay_episode(ep, events.get(ep[0].episode_id, {}), setup, root)
            checked += 1
            if verdict != ep[-1].episode_success:
                mismatched.append(ep[0].episode_id)
    return {"checked": checked, "mismatched": mismatched}


def replay_episode(ep: list[StepRow], meta: dict, setup: dict, root: Path) -> bool:
    """The verdict a fresh environment gives the episode's recorded actions. `meta`: its sidecar
    events; `setup`: the store's fingerprint (runner settings, perturbation)."""
    from envs.registry import get_env_spec

    name = ep[0].env
    spec = get_env_spec(name)
    if spec.replay is not None:
        return spec.replay(ep[0].level, ep[0].seed, executed_actions(ep, meta))
    if not spec.replayable:
        raise ValueError(f"{root}: environment {name!r} cannot rebuild an episode from its recorded actions "
                         f"(its registry entry is not replayable), so its verdicts cannot be replayed")
    return _rerun(spec, ep, meta, setup)


class _RecordedActionFail(PerturbedEnv):
    """action_fail as the evaluation drew it: the env.step calls it ignored (recorded in the episode's
    events) are ignored again, and no others."""

    def __init__(self, inner, spec: dict, ignored: set[int]) -> None:
        super().__init__(inner, spec)
        self._ignored = ignored

    def _draw(self) -> float:
        return 0.0 if self._step - 1 in self._ignored else 1.0  # step() has already counted this call


def _rerun(spec, ep: list[StepRow], meta: dict, setup: dict) -> bool:
    """Recorded actions through the episode runner, as the evaluation ran them (settings from `setup`)."""
    from agent.episode import RunnerConfig, run_episode
    from agent.policies import ScriptedPolicy

    r0 = ep[0]
    task = Task(env=r0.env, level=r0.level, seed=r0.seed, split=r0.split)
    known = set(RunnerConfig.model_fields) - {"time_limit_s", "memory"}  # replay has no clock, no memory
    runner = RunnerConfig(**{k: v for k, v in (setup.get("runner") or {}).items() if k in known})
    perturbation = setup.get("perturbation") or {"kind": "none"}
    env = spec.factory()
    if perturbation.get("kind") == "action_fail":
        ignored = {e["step"] for e in meta.get("events", []) if e["kind"] == "action_ignored"}
        env = _RecordedActionFail(env, perturbation, ignored)
    elif perturbation.get("kind") in _ACTION_CHANNEL:
        env = PerturbedEnv(env, perturbation)
    actions = [r.action for r in sorted(ep, key=lambda r: r.step) if r.valid]
    try:
        return run_episode(env, ScriptedPolicy({task.task_id: actions}), task, runner).success
    finally:
        env.close()
