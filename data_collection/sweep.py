"""Which levels does the expert actually solve? Run it on a few seeds of every level and write the
table to data_collection/LEVELS.md (the registry's level list is checked against it).

    python -m data_collection.sweep --seeds 5 --workers 2 [--levels L1,L2] [--out data_collection/LEVELS.md]

Seeds are the first ones of each level's train stream; the per-episode time limit is the env's
default (the bot hangs on some UnlockToUnlock seeds; BotStuck usually ends those in milliseconds).
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from functools import partial
from pathlib import Path

from data_collection.batch import collect_batch, prepare
from data_collection.experts import policy_model
from data_collection.fleet import Fleet
from data_collection.schema import code_version
from envs.registry import get_env_spec, task_at


def sweep(env: str, levels: list[str], seeds: int, workers: int, time_limit_s: float | None) -> dict[str, dict]:
    spec = get_env_spec(env)
    limit = spec.default_time_limit_s if time_limit_s is None else time_limit_s
    runner = {"max_steps": 100_000, "time_limit_s": limit or None}
    prov = {"model": policy_model({"kind": "expert"}, spec.expert_version), "code_version": code_version()}
    expert = {"kind": "expert"}
    fleet = Fleet(workers, env, runner, depth=1, setup=partial(prepare, policy=expert))
    work = partial(collect_batch, policy=expert, provenance=prov)
    results: dict[str, dict] = {}
    queue = [(lvl, [(i, task_at(env, [lvl], "train", i)) for i in range(seeds)]) for lvl in levels]
    by_first: dict[tuple, str] = {}
    try:
        while queue or fleet.in_flight_tasks():
            while queue and fleet.free_slots() > 0:
                lvl, batch = queue.pop(0)
                by_first[(batch[0][1].level, batch[0][1].seed)] = lvl
                fleet.submit(work, batch)
            for batch, res in fleet.wait(timeout=1.0):
                lvl = by_first[(batch[0][1].level, batch[0][1].seed)]
                outs = res["outcomes"]
                results[lvl] = {
                    "seeds": len(outs),
                    "solved": sum(o["success"] for o in outs),
                    "mean_steps": round(sum(o["steps"] for o in outs) / len(outs), 1),
                    "s_per_episode": round(res["busy_s"] / len(outs), 3),
                    "end_reasons": dict(Counter(o["end_reason"] for o in outs)),
                    "errors": sorted({o["error"][:80] for o in outs if o.get("error")}),
                }
                print(f"{lvl:<40} {results[lvl]['solved']}/{len(outs)}  {results[lvl]['end_reasons']}", flush=True)
    finally:
        fleet.close()
    return dict(sorted(results.items()))


NOTES = {"babyai": """\
Offered (`lam collect --env babyai --list-levels`): every registered BabyAI level except the ones
below, plus their mission variants (paraphrases of all, "then"/"after"/"and" compositions of six).
A level is offered when the bot solves nearly every seed; the seeds it does not solve are not lost:
they end as labelled failures (failures/, end_reason and error say why) and collection draws
more seeds until N verified episodes exist.

Not offered (envs/babyai.py BOT_UNSOLVABLE): PutNextS5N2Carrying, PutNextS6N3Carrying,
PutNextS7N4Carrying and KeyInBox (the bot cannot solve them, minigrid's BabyAIBot docstring);
OpenDoorsOrderN2Debug and OpenDoorsOrderN4Debug (7/20 and 2/20 seeds in this sweep: their strict
OpenInstr fails the episode at the first toggle of a wrong door).

Need a per-episode time limit (BOT_NEEDS_TIME_LIMIT): UnlockToUnlock and GoToImpUnlock. On some
seeds (13 of 40 and 3 of 40 when checked) minigrid's stock bot never returns from one `replan`:
its subgoal stack grows forever. Our bot raises BotStuck after 1,000 pushes in one step, so these
end in milliseconds as policy_error failures; the time limit (default 30 s) is the backstop.
"""}


def render(results: dict[str, dict], seeds: int, wall_s: float, env: str = "babyai") -> str:
    solved = [lvl for lvl, r in results.items() if r["solved"] == r["seeds"]]
    lines = [
        "# Which levels the expert solves", "",
        f"`python -m data_collection.sweep --seeds {seeds} --out data_collection/LEVELS.md` on "
        f"{time.strftime('%Y-%m-%d')}, code {code_version()}: the {env} expert through the agent's episode runner, "
        f"first {seeds} train seeds per level (paraphrases skipped: same worlds and plans as their base level), "
        f"{wall_s:.0f} s. {len(solved)} of {len(results)} levels solved on every seed.", "",
        NOTES.get(env, ""),
        "| level | solved | mean steps | s/episode | end reasons | errors |", "|---|---:|---:|---:|---|---|",
    ]
    for lvl, r in results.items():
        lines.append(f"| {lvl} | {r['solved']}/{r['seeds']} | {r['mean_steps']} | {r['s_per_episode']} | "
                     f"{r['end_reasons']} | {'; '.join(r['errors'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="babyai")
    p.add_argument("--levels", default="", help="default: every level of the env except paraphrases")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--time-limit-s", type=float, default=None)
    p.add_argument("--out", default=None, help="write the markdown table here")
    a = p.parse_args(argv)
    spec = get_env_spec(a.env)
    levels = a.levels.split(",") if a.levels else [lvl for lvl in spec.levels if "Paraphrase" not in lvl]
    t0 = time.perf_counter()
    results = sweep(a.env, levels, a.seeds, a.workers, a.time_limit_s)
    text = render(results, a.seeds, time.perf_counter() - t0, a.env)
    if a.out:
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
