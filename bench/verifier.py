"""The outcome verifier against its baselines on held-out episodes of BabyAI and the tool world.

    python bench/verifier.py --babyai DIRS --babyai-lam LAM_EXPORT --toolworld DIRS --toolworld-lam LAM_EXPORT \
        --out runs/bench-verifier [key=value ...] [babyai.key=value ...] [toolworld.key=value ...]

Runs `lam train-verifier` (training/verifier.py) once per world on that world's episode dirs (comma-separated:
lam eval outputs, lam collect datasets, planted false-success runs) with that world's trained LAM, and prints
one table per world: AUROC (all held-out episodes, and only those the agent judged done), status accuracy,
false successes caught at a 10% flag rate, for the agent's claim, TF-IDF + LR, the LAM prompted to judge, the
LAM with a trained head, and the verifier trained from scratch. Writes OUT/<world>/report.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for world in ("babyai", "toolworld"):
        p.add_argument(f"--{world}", default=None, help=f"comma-separated {world} episode dirs")
        p.add_argument(f"--{world}-lam", default=None, help=f"the trained {world} LAM export (optional)")
    p.add_argument("--out", default="runs/bench-verifier")
    p.add_argument("overrides", nargs="*", metavar="[WORLD.]KEY=VALUE",
                   help="VerifierConfig keys for both runs, or for one world: babyai.max_len=192")
    a = p.parse_args()
    from training.train import read_config
    from training.verifier import VerifierConfig, format_table, train_verifier

    for world in ("babyai", "toolworld"):
        dirs = getattr(a, world)
        if not dirs:
            continue
        mine = [o.split(".", 1)[1] if o.startswith(f"{world}.") else o for o in a.overrides
                if not o.startswith(tuple(f"{w}." for w in ("babyai", "toolworld") if w != world))]
        cfg = VerifierConfig(**{**read_config(None, mine), "lam": getattr(a, f"{world}_lam")})
        report = train_verifier(dirs.split(","), str(Path(a.out) / world), cfg)
        print(f"\n## {world}: {report['episodes']['test']} held-out episodes of {report['test_tasks']} unseen tasks "
              f"(train {report['episodes']['train']}, validation {report['episodes']['validation']}); "
              f"{report['wall_s']:.0f} s\n")
        print(format_table({**report, "table": [r for r in report["table"] if r["world"] == world]}))
        print("\nheld-out episodes by policy: " + json.dumps(report["test_by_policy"]))
        print(f"validation AUROC: {report['validation_auroc']}; best: {report['best']}")


if __name__ == "__main__":
    main()
