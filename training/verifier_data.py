"""The outcome verifier's dataset: environment-labelled episodes as transcripts, split by task.

    examples = load_examples(["runs/qs/eval", "runs/qs/data"], max_per_source=1500, seed=0)
    train, val, test = split_by_task(examples, test_fraction=0.25, val_fraction=0.1, seed=0)

A directory is an evaluation store (`episodes/`, as `lam eval` writes per policy), a dataset (`train/` and
`failures/`, as `lam collect` and self-boosting write), or a folder of those (a pipeline run's `eval/`).
The label is the environment's verdict (`episode_success`); the transcript is what the agent saw
(agent/outcome_verifier.py), never the verdict, reward or end reason. Records keep the state each step
was decided in, not the one the last action left: for text spaces that final state is rebuilt by
replaying the episode's executed actions in a fresh environment (`FinalStates`; a replay whose verdict
disagrees with the record's is refused, so a transcript never shows a state the agent did not see). Episodes are split by task
(env, level, seed): every policy's episode of a held-out task is held out, so no test task was seen.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from agent.outcome_verifier import TranscriptStep, transcript_messages
from data_collection.schema import StepRow, group_steps


@dataclass
class Example:
    episode_id: str
    env: str
    task: str  # env/level/seed: the unit of the split
    policy: str
    source: str  # the directory it came from
    label: bool  # the environment verified success
    status_done: bool  # the agent's own judgment (eval/metrics.py): claimed done, or ended at success
    claimed_done: bool
    end_reason: str
    messages: list[dict]

    @property
    def false_success(self) -> bool:
        return self.claimed_done and not self.label


def episode_dirs(path: str | Path) -> list[tuple[Path, list[str]]]:
    """(store root, subsets) for every trajectory store in `path` (itself, or its subfolders)."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"--data {p}: no such directory (pass lam eval or lam collect output dirs)")
    if (p / "episodes").is_dir():
        return [(p, ["episodes"])]
    if (p / "train").is_dir() or (p / "failures").is_dir():
        return [(p, [s for s in ("train", "failures") if (p / s).is_dir()])]
    found = [d for sub in sorted(p.iterdir()) if sub.is_dir() for d in episode_dirs_or_none(sub)]
    if not found:
        raise FileNotFoundError(f"--data {p} holds no episodes: expected episodes/ (lam eval), train/ or failures/ "
                                f"(lam collect), or folders of those")
    return found


def episode_dirs_or_none(p: Path) -> list[tuple[Path, list[str]]]:
    try:
        return episode_dirs(p)
    except FileNotFoundError:
        return []


def row_steps(ep: list[StepRow]) -> list[TranscriptStep]:
    """Transcript steps of an episode's rows; only the last two steps' conversations are parsed (the
    transcript reads no other, and a 64-step BabyAI episode's JSON is most of the loading time)."""
    n = len(ep)
    return [TranscriptStep(r.chat_messages() if i >= n - 2 else [], r.action, r.raw_output, r.valid, r.feedback,
                           _claim(r), bool(r.tools)) for i, r in enumerate(ep)]


def _claim(r: StepRow) -> str:
    """The step's claim as the runner saw it: records keep claimed_done; a text-space give-up or a claim
    the runner did not end on still shows as the claim action's name."""
    if r.claimed_done:
        return "done"
    return "done" if (not r.tools and r.action == "done") else ""


class FinalStates:
    """The state an episode's last executed action left, by replaying its actions (one env per world, reused)."""

    def __init__(self, check: bool = True) -> None:
        self._envs: dict = {}
        self.replayed, self.check = 0, check  # check: the replay's verdict must be the record's

    def __call__(self, ep: list[StepRow]) -> str:
        if not ep or any(r.tools for r in ep):  # tool spaces: the tool results show the state
            return ""
        last = ep[-1]
        if len(ep) > 1 and _claim(last):  # a claim step was decided in the state the previous action left
            return last.state
        from envs.base import Action, Task, rebuildable
        from envs.registry import make_env

        env = self._envs.get(last.env)
        if env is None:
            env = self._envs[last.env] = make_env(last.env)
        if not rebuildable(env):
            return ""
        obs = env.reset(Task(last.env, last.level, last.seed, last.split or "train"))
        state = obs.state
        for r in ep:
            if r.valid and not r.blocked and r.action:
                res = env.step(Action(r.action))
                state = res.observation.state
                if res.terminated:
                    break
        if self.check and bool(env.success) != bool(last.episode_success):
            raise ValueError(f"episode {last.episode_id}: replaying its actions gives "
                             f"{'success' if env.success else 'failure'}, the record says "
                             f"{'success' if last.episode_success else 'failure'}; the environment changed since")
        self.replayed += 1
        return state


def episode_transcript(ep: list[StepRow], final_states: FinalStates | None = None) -> list[dict]:
    """The verifier's transcript of a recorded episode (the same the agent API scores for a session)."""
    return transcript_messages(row_steps(ep), (final_states or FinalStates())(ep))


def example_of(ep: list[StepRow], source: str, final_states: FinalStates | None = None) -> Example:
    last = ep[-1]
    success = bool(last.episode_success)
    claimed = any(r.claimed_done for r in ep)
    return Example(episode_id=last.episode_id, env=last.env, task=f"{last.env}/{last.level}/{last.seed}",
                   policy=last.policy, source=source, label=success, status_done=claimed or success,
                   claimed_done=claimed, end_reason=last.end_reason, messages=episode_transcript(ep, final_states))


def load_examples(dirs: list[str], max_per_source: int = 0, seed: int = 0) -> list[Example]:
    """Every episode in `dirs` (infrastructure-error placeholders left out); at most max_per_source per
    store and label (0: all), a seeded sample, so a 15,000-success dataset does not drown the failures."""
    from data_collection.store import TrajectoryStore

    out: list[Example] = []
    final_states = FinalStates()
    for d in dirs:
        for root, subsets in episode_dirs(d):
            store = TrajectoryStore(root)
            rows = [r for s in subsets if store.shard_paths(s) for r in store.read_rows(s)]
            eps = [ep for ep in group_steps(rows) if ep and ep[0].step >= 0 and ep[-1].end_reason != "infra_error"]
            rng = random.Random(f"{seed}/{root}")
            for label in (True, False):
                group = [ep for ep in eps if bool(ep[-1].episode_success) == label]
                if max_per_source and len(group) > max_per_source:
                    group = rng.sample(group, max_per_source)
                out += [example_of(ep, str(root), final_states) for ep in group]
    if not out:
        raise ValueError(f"no episodes in {', '.join(dirs)}")
    return out


def task_bucket(task: str, seed: int) -> float:
    """A task's place in [0, 1), fixed by its name and the seed: the split never depends on what else is loaded."""
    return int(hashlib.sha1(f"{seed}/{task}".encode()).hexdigest()[:8], 16) / 2**32


def split_by_task(examples: list[Example], test_fraction: float, val_fraction: float, seed: int):
    """(train, val, test): disjoint sets of tasks; val (from the training side) picks the threshold."""
    train, val, test = [], [], []
    for e in examples:
        b = task_bucket(e.task, seed)
        (test if b < test_fraction else val if b < test_fraction + val_fraction else train).append(e)
    return train, val, test
