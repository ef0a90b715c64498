"""Learning curve: held-out success of one training run's checkpoints against the demonstrations each had trained on.

    lam train --data runs/quickstart/data --out runs/long --config configs/quickstart.yaml \
        epochs=10 checkpoint_every=200 time_budget_s=1800
    python bench/learning_curve.py --run runs/long --levels BabyAI-GoToLocal-v0 --episodes 200 --out runs/long/curve

Every checkpoint in RUN/checkpoints (DeepSpeed, ZeRO 0-2) becomes a Hugging Face export (the run's tokenizer,
its config), is served on 127.0.0.1 by the embedded backend and evaluated by the one evaluator on the same
held-out test seeds at the eval temperature. A checkpoint's demonstrations seen = its epoch (from the run's
metrics.jsonl, logged every 10 steps) x the run's episodes. Writes OUT/curve.json (success with its Wilson 95%
interval per checkpoint) and OUT/curve.svg.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def checkpoint_export(run: Path, tag: str, out: Path) -> Path:
    """RUN/checkpoints/TAG as a Hugging Face directory (the run's export config and tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from training.tokenizer import load_tokenizer

    if out.exists() and (out / "config.json").exists():
        return out
    files = sorted((run / "checkpoints" / tag).glob("mp_rank_00_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"{run}/checkpoints/{tag} has no mp_rank_00_model_states.pt (ZeRO-3 runs are not read here)")
    state = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    state = {k.removeprefix("lm."): v for k, v in state.items()}
    tok_dir = run / "export" if (run / "export").exists() else run / "tokenizer"
    if (run / "export").exists():
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(run / "export"))
    else:  # a run stopped before its export: the preset it was built from (training/model.py)
        from training.model import build_model

        cfg = json.loads((run / "train_config.json").read_text())
        lm = build_model(cfg["model"], vocab_size=len(load_tokenizer(tok_dir)), max_positions=cfg["max_seq_len"])
    missing, unexpected = lm.load_state_dict(state, strict=False)
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise ValueError(f"{tag}: checkpoint does not match the export's config (missing {missing}, unexpected {unexpected})")
    lm.tie_weights()
    lm.save_pretrained(out)
    load_tokenizer(tok_dir).save_pretrained(out)
    return out


def epoch_at(run: Path, step: int) -> float:
    """The epoch the run had reached at `step` (metrics.jsonl logs it with the loss, every few steps)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    logged = [(r["step"], r["epoch"]) for r in rows if "epoch" in r and "step" in r]
    if not logged:
        raise ValueError(f"{run}/metrics.jsonl logs no epochs")
    s, e = min(logged, key=lambda se: abs(se[0] - step))
    return e * step / s if s else e


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a lam train --out directory with checkpoints/ and export/")
    ap.add_argument("--env", default="babyai")
    ap.add_argument("--levels", default="BabyAI-GoToLocal-v0")
    ap.add_argument("--episodes", type=int, default=200, help="per level, held-out test seeds")
    ap.add_argument("--max-steps", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--out", required=True)
    ap.add_argument("--episodes-trained", type=int, default=None,
                    help="the run's training episodes, for a run stopped before its summary.json")
    a = ap.parse_args()

    from agent.episode import RunnerConfig
    from envs.registry import sample_tasks
    from eval.evaluator import evaluate
    from serving.launch import start_server_subprocess

    run, out = Path(a.run), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tags = sorted((p.name for p in (run / "checkpoints").glob("step*") if p.is_dir()), key=lambda t: int(t[4:]))
    finished = (run / "summary.json").exists()
    summary = json.loads((run / "summary.json").read_text()) if finished else {"episodes": a.episodes_trained}
    if not summary.get("episodes"):
        raise SystemExit(f"{run} has no summary.json (stopped early?): give --episodes-trained N")
    points = [(int(t[4:]), t) for t in tags] + ([(summary["steps"], "export")] if finished else [])
    points = sorted({s: t for s, t in points}.items())  # the final checkpoint and the export are one point
    tasks = sample_tasks(a.env, a.levels.split(","), "test", a.episodes * len(a.levels.split(",")))
    runner = RunnerConfig(max_steps=a.max_steps)
    curve_path = out / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else []
    done = {p["step"] for p in curve}
    for step, tag in points:
        if step in done:
            continue
        model = run / "export" if tag == "export" else checkpoint_export(run, tag, out / "exports" / tag)
        with start_server_subprocess(str(model), threads=2, max_batch_size=32, model_name="export") as server:
            server.wait_healthy()
            policy = {"kind": "model", "base_url": server.base_url, "model": "export", "temperature": a.temperature,
                      "seed": 0}
            res = evaluate(f"step{step}", a.env, tasks, policy, runner, a.workers, out / "eval", progress=False)
        m = res["overall"]
        demos = round(epoch_at(run, step) * summary["episodes"])
        curve.append({"step": step, "demonstrations_seen": demos, "episodes": m["episodes"], "successes": m["successes"],
                      "success_rate": m["success_rate"], "success_ci95": m["success_ci95"]})
        curve.sort(key=lambda p: p["step"])
        curve_path.write_text(json.dumps(curve, indent=1))
        lo, hi = m["success_ci95"]
        print(f"step {step:5d} ({demos} demonstrations seen): success {100 * m['success_rate']:.1f}% "
              f"[{100 * lo:.1f}, {100 * hi:.1f}] on {m['episodes']} held-out episodes", flush=True)
    (out / "curve.svg").write_text(plot(curve, f"{a.levels} ({a.episodes} held-out episodes per point, T={a.temperature})"))
    print(f"{curve_path}, {out / 'curve.svg'}")
    return 0


def plot(curve: list[dict], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval.plots import _svg

    x = [p["demonstrations_seen"] / 1000 for p in curve]
    y = [100 * p["success_rate"] for p in curve]
    lo = [100 * p["success_ci95"][0] for p in curve]
    hi = [100 * p["success_ci95"][1] for p in curve]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.fill_between(x, lo, hi, alpha=0.25, color="#4c72b0", label="95% interval")
    ax.plot(x, y, "o-", color="#4c72b0", label="held-out success")
    ax.set_xlabel("demonstrations seen (thousands; epochs x episodes)")
    ax.set_ylabel("success (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8, loc="lower right")
    return _svg(fig)


if __name__ == "__main__":
    raise SystemExit(main())
