"""The report's plots, drawn with matplotlib (Agg) as SVG: success per level, pass^k over k, latency
histogram, claimed-vs-verified confusion matrices and robustness effects. Each returns SVG text."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "lam-eval"  # stable ids: the same report renders the same bytes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3"]


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def success_per_level(report: dict) -> str:
    variants = list(report["variants"])
    levels = sorted({lvl for v in report["variants"].values() for lvl in v["levels"]})
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(levels) * max(1, len(variants)) ** 0.5), 3.2))
    width = 0.8 / max(1, len(variants))
    for i, name in enumerate(variants):
        ms = [report["variants"][name]["levels"].get(lvl) for lvl in levels]
        y = np.array([m["success_rate"] if m else 0.0 for m in ms])
        lo = np.array([m["success_ci95"][0] if m else 0.0 for m in ms])
        hi = np.array([m["success_ci95"][1] if m else 0.0 for m in ms])
        x = np.arange(len(levels)) + (i - (len(variants) - 1) / 2) * width
        ax.bar(x, y, width, color=COLORS[i % len(COLORS)], label=name,
               yerr=np.vstack([y - lo, hi - y]).clip(0), capsize=3)
    ax.set_xticks(np.arange(len(levels)), [lvl.replace("BabyAI-", "").replace("-v0", "") for lvl in levels],
                  rotation=20 if len(levels) > 3 else 0)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success (95% CI)")
    ax.set_title("success per level")
    ax.legend(fontsize=7, loc="lower right")
    return _svg(fig)


def pass_k_skip_reason(report: dict) -> str | None:
    """Why there is no pass^k curve to draw: a curve needs k = 1 and 2 at least (--trials 2+)."""
    kmax = max((int(k) for v in report["variants"].values() for k in v["pass_k"]), default=0)
    if kmax == 0:
        return "pass^k plot skipped: no agent episodes"
    if kmax == 1:
        return "pass^k plot skipped: one trial per task gives only pass^1 (the success rate); run with --trials 2 or more"
    return None


def pass_k(report: dict) -> str | None:
    if pass_k_skip_reason(report):  # a single point on a 0.96-1.04 axis says nothing
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for i, (name, v) in enumerate(report["variants"].items()):
        ks = sorted(int(k) for k in v["pass_k"])
        if not ks:
            continue
        y = [v["pass_k"][str(k)]["value"] for k in ks]
        lo = [v["pass_k"][str(k)]["ci95"][0] for k in ks]
        hi = [v["pass_k"][str(k)]["ci95"][1] for k in ks]
        c = COLORS[i % len(COLORS)]
        ax.plot(ks, y, "o-", color=c, label=name)
        ax.fill_between(ks, lo, hi, color=c, alpha=0.15)
    ax.set_xlabel("k (trials that must all succeed)")
    ax.set_ylabel("pass^k (95% CI)")
    ax.set_ylim(0, 1.05)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("pass^k over k")
    ax.legend(fontsize=7)
    return _svg(fig)


def latency_histogram(report: dict) -> str:
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for i, (name, v) in enumerate(report["variants"].items()):
        h = v["latency_hist"]
        if h["counts"]:
            ax.stairs(h["counts"], h["edges_ms"], color=COLORS[i % len(COLORS)], label=name, linewidth=1.5)
    ax.set_xlabel("policy latency per step (ms)")
    ax.set_ylabel("steps")
    ax.set_title("latency per step")
    ax.legend(fontsize=7)
    return _svg(fig)


def confusion(report: dict) -> str:
    names = list(report["variants"])
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names) + 0.6, 2.9), squeeze=False)
    rows = [("claimed_done", "claimed done"), ("env_ended_at_success", "reached goal"), ("no_claim", "no claim")]
    for ax, name in zip(axes[0], names):
        c = report["variants"][name]["overall"]["confusion"]
        grid = np.array([[c[k]["verified"], c[k]["failed"]] for k, _ in rows])
        ax.imshow(grid, cmap="Blues", vmin=0, vmax=max(1, grid.max()) * 1.6)  # light: the counts stay legible
        for (r, col), val in np.ndenumerate(grid):
            warn = r == 0 and col == 1 and val > 0  # claimed done, environment says failed
            ax.text(col, r, str(val), ha="center", va="center", fontsize=11,
                    color="#c00000" if warn else "black", fontweight="bold" if warn else "normal")
        ax.add_patch(Rectangle((0.5, -0.5), 1, 1, fill=False, edgecolor="#c00000", linewidth=2))  # false success
        ax.set_xticks([0, 1], ["verified", "failed"])
        ax.set_yticks([0, 1, 2], [lbl for _, lbl in rows] if ax is axes[0][0] else ["", "", ""])
        ax.set_title(name, fontsize=9)
    fig.suptitle("agent's claim vs environment's verdict (red box: false success)", fontsize=10, y=1.06)
    return _svg(fig)


def effects(report: dict) -> str | None:
    eff = report.get("effects") or {}
    if not eff:
        return None
    names = list(eff)
    fig, ax = plt.subplots(figsize=(4.5, 0.5 * len(names) + 1.2))
    y = np.arange(len(names))
    d = np.array([eff[n]["delta"] for n in names]) * 100
    lo = np.array([eff[n]["ci95"][0] for n in names]) * 100
    hi = np.array([eff[n]["ci95"][1] for n in names]) * 100
    ax.errorbar(d, y, xerr=np.vstack([d - lo, hi - d]).clip(0), fmt="o", color=COLORS[3], capsize=4)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_yticks(y, names)
    ax.set_xlabel("change in success vs clean (pp, 95% CI)")
    ax.set_title("effect of each variant")
    return _svg(fig)
