"""`lam view DIR`: a finished evaluation run or a dataset in the browser, read-only, on 127.0.0.1.

    lam view runs/eval-success                 # a suite run: one store per variant (clean/, paraphrase/, ...)
    lam view runs/quickstart/eval --port 8301  # a plain `lam eval` or pipeline run: one store per policy
    lam view runs/data                         # a dataset: train/ (verified successes) and failures/

The episodes list puts false successes first (the agent claimed done, the environment did not verify it)
and filters by outcome; an episode's page shows its transcript step by step (request, observation, the
model's raw output, the grounded action, feedback, the safety guard's decisions), BabyAI frames re-rendered
from level, seed and actions (envs/babyai_frames.py), and its replay verdict (eval/replays.py: the recorded
actions re-run in a fresh environment). Nothing is written: the pages only read the stores.
"""
from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass
from pathlib import Path

from data_collection.schema import StepRow, group_steps, table_rows
from data_collection.store import MANIFEST, TrajectoryStore

OUTCOMES = ("false_success", "failure", "infra_error", "success")  # the list's order: what to look at first
_INDEX_COLUMNS = ["episode_id", "step", "env", "level", "seed", "claimed_done", "episode_success", "end_reason",
                  "policy", "request"]


def outcome_of(rows: list[StepRow]) -> str:
    """false_success | failure | infra_error | success, as eval/metrics.py counts episodes."""
    last = rows[-1]
    if last.step < 0 or last.end_reason == "infra_error":
        return "infra_error"
    claimed = any(r.claimed_done for r in rows)
    if last.episode_success:
        return "success"
    return "false_success" if claimed else "failure"


@dataclass
class EpisodeEntry:
    store: int  # index into RunIndex.stores
    episode_id: str
    env: str
    level: str
    seed: int
    steps: int
    claimed: bool
    verified: bool
    end_reason: str
    outcome: str
    policy: str
    request: str
    shard: Path  # the one shard holding its rows (an episode never spans two)


@dataclass
class StoreInfo:
    label: str  # its path under DIR ("." for DIR itself)
    root: Path
    kind: str  # "evaluation" (an episodes/ subset) or "dataset" (train/ and failures/)


def find_stores(path: str | Path) -> list[StoreInfo]:
    """The trajectory stores of DIR: DIR itself, or its subfolders (suite variants, policies) up to two deep."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory (give an evaluation run or a dataset directory)")
    roots = [path] if (path / MANIFEST).exists() else sorted(
        {p.parent for pattern in (f"*/{MANIFEST}", f"*/*/{MANIFEST}") for p in path.glob(pattern)})
    if not roots:
        raise FileNotFoundError(f"{path} holds no evaluation run or dataset (no {MANIFEST} in it or its subfolders; "
                                "`lam eval --out DIR` and `lam collect --out DIR` write one)")
    out = []
    for root in roots:
        subsets = {k.split("/")[0] for k in TrajectoryStore(root).manifest()["shards"]}  # DatasetError if corrupt
        label = str(root.relative_to(path)) if root != path else "."
        out.append(StoreInfo(label, root, "evaluation" if subsets <= {"episodes"} else "dataset"))
    return out


class RunIndex:
    """Every episode of DIR's stores, from a few columns of each shard; full rows are read per episode."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.stores = find_stores(self.path)
        self.episodes: list[EpisodeEntry] = []
        for i, info in enumerate(self.stores):
            store = TrajectoryStore(info.root)
            for shard in store.shard_paths():
                for ep in group_steps(table_rows(store.read_shard(shard, columns=_INDEX_COLUMNS))):
                    r0, last = ep[0], ep[-1]
                    self.episodes.append(EpisodeEntry(
                        i, r0.episode_id, r0.env, r0.level, r0.seed, sum(r.step >= 0 for r in ep),
                        any(r.claimed_done for r in ep), bool(last.episode_success), last.end_reason,
                        outcome_of(ep), r0.policy, r0.request, shard))
        self.episodes.sort(key=lambda e: (OUTCOMES.index(e.outcome), e.store, e.episode_id))
        self._by_key = {(e.store, e.episode_id): e for e in self.episodes}
        self._meta: dict[int, tuple[dict, dict]] = {}

    def counts(self) -> dict[str, int]:
        return {o: sum(e.outcome == o for e in self.episodes) for o in OUTCOMES}

    def select(self, outcome: str = "all", store: int | None = None) -> list[EpisodeEntry]:
        if outcome != "all" and outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; one of: all, {', '.join(OUTCOMES)}")
        return [e for e in self.episodes if (outcome == "all" or e.outcome == outcome)
                and (store is None or e.store == store)]

    def entry(self, store: int, episode_id: str) -> EpisodeEntry | None:
        return self._by_key.get((store, episode_id))

    def rows(self, e: EpisodeEntry) -> list[StepRow]:
        table = TrajectoryStore(self.stores[e.store].root).read_shard(e.shard)
        return sorted((r for r in table_rows(table) if r.episode_id == e.episode_id), key=lambda r: r.step)

    def meta(self, e: EpisodeEntry) -> tuple[dict, dict]:
        """The episode's sidecar events (evaluations only) and its store's fingerprint (runner, perturbation)."""
        from eval.evaluator import read_events

        if e.store not in self._meta:  # read once per store: every frame of an episode asks for it
            root = self.stores[e.store].root
            self._meta[e.store] = (read_events(root) if (root / "events").is_dir() else {},
                                   TrajectoryStore(root).manifest()["meta"].get("fingerprint", {}))
        events, setup = self._meta[e.store]
        return events.get(e.episode_id, {}), setup

    def replay(self, e: EpisodeEntry, rows: list[StepRow]) -> dict:
        """{"verdict": bool | None, "matches": bool | None, "error": str}: the recorded actions in a fresh env."""
        from eval.replays import replay_episode

        if rows[0].step < 0:
            return {"verdict": None, "matches": None, "error": "the episode took no step: nothing to replay"}
        events, setup = self.meta(e)
        try:
            verdict = replay_episode(rows, events, setup, self.stores[e.store].root)
        except Exception as ex:  # not replayable, or its world is not installed: say so on the page
            return {"verdict": None, "matches": None, "error": f"{type(ex).__name__}: {ex}"}
        return {"verdict": verdict, "matches": verdict == e.verified, "error": ""}

    def frame_actions(self, e: EpisodeEntry, rows: list[StepRow], upto: int) -> list[str]:
        """The actions that reached the environment before step `upto` (eval/replays.py's rule)."""
        from eval.replays import executed_actions

        events, _ = self.meta(e)
        return executed_actions([r for r in rows if 0 <= r.step < upto], events)


def create_view_app(index: RunIndex):
    """The read-only pages over `index` (GET only)."""
    from fastapi import FastAPI, Query
    from fastapi.responses import HTMLResponse, Response

    from agent.console.web import babyai_frame, static_response
    from eval import view_html

    app = FastAPI(title="lam view", docs_url=None, redoc_url=None, openapi_url=None)

    def not_found(what: str) -> HTMLResponse:
        return HTMLResponse(view_html.page("not found", f"<p>{view_html.esc(what)}</p>"), status_code=404)

    @app.get("/", response_class=HTMLResponse)
    def episodes(outcome: str = "all", store: int | None = None, offset: int = Query(0, ge=0)):
        if outcome != "all" and outcome not in OUTCOMES:
            return HTMLResponse(view_html.page("bad filter", view_html.esc(
                f"unknown outcome {outcome!r}; one of: all, {', '.join(OUTCOMES)}")), status_code=400)
        if store is not None and not 0 <= store < len(index.stores):
            return not_found(f"no store {store} in {index.path}")
        return view_html.episodes_page(index, outcome, store, offset)

    @app.get("/episode/{store}/{episode_id}", response_class=HTMLResponse)
    def episode(store: int, episode_id: str):
        e = index.entry(store, episode_id)
        if e is None:
            return not_found(f"no episode {episode_id!r} in store {store} of {index.path}")
        rows = index.rows(e)
        return view_html.episode_page(index, e, rows, index.replay(e, rows))

    @app.get("/frame/{store}/{episode_id}/{k}.png")
    def frame(store: int, episode_id: str, k: int):
        e = index.entry(store, episode_id)
        if e is None or e.env != "babyai" or not 0 <= k <= e.steps:
            return not_found(f"no frame {k} of {episode_id!r}")
        rows = index.rows(e)
        return Response(babyai_frame(e.level, e.seed, index.frame_actions(e, rows, k)), media_type="image/png")

    @app.get("/static/{name}")
    def static(name: str):
        return static_response(name)

    return app


def add_args(s: argparse.ArgumentParser) -> None:
    s.description = "serve a finished evaluation run or a dataset read-only on 127.0.0.1 (episodes, transcripts, replays)"
    s.add_argument("dir", metavar="DIR", help="an evaluation run (lam eval --out) or a dataset (lam collect --out)")
    s.add_argument("--port", type=int, default=8300, help="port on 127.0.0.1 (0: a free one)")


def main(a) -> int:
    import uvicorn

    index = RunIndex(a.dir)  # a bad DIR stops here with one line (cluster/cli.py prints it)
    sock = _bind(a.port)
    counts = index.counts()
    print(f"lam view: {len(index.episodes)} episodes in {len(index.stores)} store(s) of {a.dir} "
          f"({counts['false_success']} false successes) at http://127.0.0.1:{sock.getsockname()[1]}/", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_view_app(index), log_level="warning", access_log=False))
    server.run(sockets=[sock])
    return 0


def _bind(port: int) -> socket.socket:
    """The listening socket on 127.0.0.1, bound here so a busy port is one line, not uvicorn's traceback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}); choose another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock

