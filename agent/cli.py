"""`lam agent`: this stage's command line (cluster/cli.py only dispatches here).

    lam agent serve --host 127.0.0.1 --port 8100 --db runs/agent/sessions.db
    lam agent audit --env bfcl --levels multi_turn_base --limit 50
"""
from __future__ import annotations

import argparse

from agent import api, replay


def add_args(s: argparse.ArgumentParser) -> None:
    asub = s.add_subparsers(dest="action", required=True)
    api.add_args(asub.add_parser("serve", help="serve the agent HTTP API (FastAPI, sessions persisted in SQLite)"))
    replay.add_args(asub.add_parser("audit", help="expert, replay and perturbed replays per task: does the verdict notice?"))


def main(a) -> int:
    (api.serve if a.action == "serve" else replay.audit_from_args)(a)
    return 0
