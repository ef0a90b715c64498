"""`lam train-verifier`: this stage's command line (cluster/cli.py only dispatches here).

    lam train-verifier --data runs/qs/eval,runs/planted --out runs/verifier [--lam runs/qs/train/export] \
        [--config configs/verifier.yaml] [key=value ...]

Prints the held-out table (AUROC, status accuracy, false successes caught, next to the baselines) and
writes OUT/report.json and the checkpoints OUT/scratch, OUT/lam-head, OUT/best (training/verifier.py).
"""
from __future__ import annotations

import argparse
import json


def add_args(s: argparse.ArgumentParser) -> None:
    s.description = ("Train the outcome verifier (training/verifier.py) on environment-labelled episodes and measure "
                     "it on held-out tasks against the agent's claim, TF-IDF + LR and the LAM prompted to judge.")
    s.add_argument("--data", required=True,
                   help="comma-separated dirs: lam eval outputs (episodes/), lam collect datasets (train/, failures/), "
                        "or folders of those (a pipeline run's eval/)")
    s.add_argument("--out", required=True)
    s.add_argument("--lam", default=None, help="a trained LAM export: also train a head on it and ask it to judge")
    s.add_argument("--config", default=None, help="YAML of VerifierConfig keys, e.g. configs/verifier.yaml")
    s.add_argument("--json", action="store_true", help="print report.json instead of the table")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="VerifierConfig keys: epochs=4 max_len=384 ...")


def main(a) -> int:
    from training.train import read_config
    from training.verifier import VerifierConfig, format_table, train_verifier

    raw = read_config(a.config, a.overrides, section="verifier")
    if a.lam:
        raw["lam"] = a.lam
    cfg = VerifierConfig(**raw)  # a bad key stops here, before any data is read
    report = train_verifier([d for d in a.data.split(",") if d], a.out, cfg)
    if a.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_table(report))
        print(f"best on validation: {report['best']} -> {a.out}/best (lam agent serve --verifier {a.out}/best)")
    return 0
