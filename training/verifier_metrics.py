"""How a verifier (or a baseline) is scored on held-out episodes, and the baselines it is compared with.

    row = verifier_metrics(scores, examples, threshold=0.5, flag_rate=0.1)

- AUROC of the score against the environment's verdict;
- status accuracy: the share of episodes where `score >= threshold` matches the verdict;
- caught at a flag rate: of the episodes the agent judged done (eval/metrics.py's status: claimed done,
  or the environment ended it at success), flag the `flag_rate` share with the lowest scores; the share
  of all false successes (claimed done, verdict failed) among the flagged ones. Ties are broken by a
  seeded shuffle, so a constant score catches what a random flagger would.
Baselines: the agent's own claim, TF-IDF + logistic regression (scikit-learn) on the rendered transcript.
"""
from __future__ import annotations

import random

from training.verifier_data import Example


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(set(labels)) < 2:
        return None  # one class only: undefined
    return float(roc_auc_score([int(x) for x in labels], scores))


def caught_at_rate(scores: list[float], examples: list[Example], flag_rate: float, seed: int = 0) -> tuple[int, int]:
    """(false successes flagged, false successes) when flagging the lowest-scoring flag_rate of the
    episodes the agent judged done."""
    judged = [i for i, e in enumerate(examples) if e.status_done]
    rng = random.Random(seed)
    tie = {i: rng.random() for i in judged}
    judged.sort(key=lambda i: (scores[i], tie[i]))
    flagged = set(judged[: round(flag_rate * len(judged))])
    fs = [i for i, e in enumerate(examples) if e.false_success]
    return sum(i in flagged for i in fs), len(fs)


def verifier_metrics(scores: list[float], examples: list[Example], threshold: float, flag_rate: float) -> dict:
    labels = [e.label for e in examples]
    ok = sum((s >= threshold) == y for s, y in zip(scores, labels))
    caught, fs = caught_at_rate(scores, examples, flag_rate)
    a = auroc(scores, labels)
    return {"episodes": len(examples), "successes": sum(labels), "false_successes": fs,
            "auroc": None if a is None else round(a, 4), "status_accuracy": round(ok / max(1, len(examples)), 4),
            "threshold": round(threshold, 4), f"caught_at_{round(100 * flag_rate)}pct": caught,
            "catch_rate": round(caught / fs, 4) if fs else None}


def best_threshold(scores: list[float], labels: list[bool]) -> float:
    """The threshold with the best status accuracy (on validation episodes); 0.5 without any."""
    if not scores:
        return 0.5
    cands = sorted(set(scores))
    best = max(cands, key=lambda t: (sum((s >= t) == y for s, y in zip(scores, labels)), -abs(t - 0.5)))
    return float(best)


def claim_scores(examples: list[Example]) -> list[float]:
    """The agent's own judgment as a score: 1 when it judged done (eval/metrics.py's status), else 0."""
    return [float(e.status_done) for e in examples]


class TfidfBaseline:
    """TF-IDF of word 1-2 grams of the rendered transcript + logistic regression (the literature's
    0.83-0.95 AUROC false-success detector)."""

    def __init__(self, seed: int = 0) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        self.vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=100_000, sublinear_tf=True,
                                   token_pattern=r"[A-Za-z_]+|\d+|[^\sA-Za-z_\d]")
        self.clf = LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced", random_state=seed)

    def fit(self, texts: list[str], labels: list[bool]) -> "TfidfBaseline":
        self.clf.fit(self.vec.fit_transform(texts), [int(y) for y in labels])
        return self

    def scores(self, texts: list[str]) -> list[float]:
        return self.clf.predict_proba(self.vec.transform(texts))[:, 1].tolist()
