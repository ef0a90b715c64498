"""Train the outcome verifier: P(the environment verified success | the episode's transcript).

    lam train-verifier --data runs/qs/eval,runs/planted --out runs/verifier [--lam runs/qs/train/export] [key=value ...]

Two verifiers on the same split, measured side by side with the baselines (training/verifier_metrics.py):
(a) a small transformer trained from scratch (a `training/model.py` preset body, a tokenizer trained on the
transcripts, a linear head; end to end), and (b) with `lam`, a linear head on the trained LAM's frozen
hidden states (its own tokenizer). The trained LAM prompted to judge ("did the agent do it? yes/no",
P(yes) from its next-token logits) is the third baseline. Held-out tasks are disjoint from training ones
(training/verifier_data.py); the threshold is picked on validation tasks. Writes OUT/scratch, OUT/lam-head
(checkpoints agent/outcome_verifier.py loads), OUT/best (the one with the better validation AUROC) and
OUT/report.json (the table, per world).
"""
from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.outcome_verifier import (build_classifier, encode_transcript, load_verifier, pad_batch, render_transcript,
                                    save_verifier)
from training.verifier_data import Example, load_examples, split_by_task
from training.verifier_metrics import TfidfBaseline, best_threshold, claim_scores, verifier_metrics

JUDGE_QUESTION = "Did the agent fully complete the request? Answer yes or no."


class VerifierConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    # size preset of the classifier trained from scratch (training/model.py PRESETS)
    model: str = "mini"
    # its tokenizer, trained on the transcripts (training/tokenizer.py): vocabulary and style
    vocab_size: int = 2048
    tokenizer: Literal["auto", "phrases", "words"] = "auto"
    # tokens read per transcript: the first head_tokens (the request) and the last ones (how it ended)
    max_len: int = Field(384, ge=16)
    head_tokens: int = Field(48, ge=0)
    epochs: float = 6.0
    lr: float = 1e-3
    batch_size: int = 16
    weight_decay: float = 0.01
    # share of tasks held out for the test table, and of the rest for picking the threshold
    test_fraction: float = Field(0.3, gt=0, lt=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    # at most this many episodes per store and label (a 15,000-success dataset would drown the failures); 0 = all
    max_per_source: int = 1500
    # "false successes caught" flags this share of the episodes the agent judged done
    flag_rate: float = Field(0.1, gt=0, le=1)
    # a trained LAM export: a head on its hidden states, and the LAM prompted to judge (baseline); null = neither
    lam: str | None = None
    threads: int | None = None
    seed: int = 0
    # stop training the scratch model after this long (it keeps its best validation epoch)
    time_budget_s: float | None = None


def _log(msg: str) -> None:
    print(f"train-verifier: {msg}", file=sys.stderr, flush=True)


def _encode(tok, examples: list[Example], cfg: VerifierConfig) -> list[list[int]]:
    return [encode_transcript(tok, render_transcript(tok, e.messages), cfg.max_len, cfg.head_tokens) for e in examples]


def _scores(model, seqs: list[list[int]], pad_id: int, batch: int = 32) -> list[float]:
    import torch

    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    with torch.no_grad():
        for k in range(0, len(order), batch):
            idx = order[k : k + batch]
            ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
            for i, s in zip(idx, torch.sigmoid(model(ids, mask)).tolist()):
                out[i] = s
    return out


def _batches(seqs: list[list[int]], size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(len(seqs)))
    rng.shuffle(order)
    pool = size * 16  # sort within pools: similar lengths together, little padding
    batches = []
    for p in range(0, len(order), pool):
        chunk = sorted(order[p : p + pool], key=lambda i: len(seqs[i]))
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(batches)
    return batches


def train_scratch(train: list[Example], val: list[Example], cfg: VerifierConfig):
    """(classifier, tokenizer, body config, validation scores) of the from-scratch verifier."""
    import torch

    from training.model import build_model
    from training.samples import Conversation, tokenizer_texts
    from training.tokenizer import train_tokenizer

    style = cfg.tokenizer if cfg.tokenizer != "auto" else (
        "words" if any(m.get("tool_calls") or m["role"] == "tool" for e in train for m in e.messages) else "phrases")
    tok = train_tokenizer(tokenizer_texts([Conversation(e.messages) for e in train]), cfg.vocab_size, style=style)
    body_config = build_model(cfg.model, len(tok), max_positions=cfg.max_len + 8).config.to_dict()
    torch.manual_seed(cfg.seed)
    model = build_classifier(body_config)
    seqs, vseqs = _encode(tok, train, cfg), _encode(tok, val, cfg)
    labels = torch.tensor([float(e.label) for e in train])
    pos = float(labels.sum())
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(train) - pos) / max(pos, 1.0)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng, t0 = random.Random(cfg.seed), time.perf_counter()
    steps_per_epoch = -(-len(seqs) // cfg.batch_size)
    total = max(1, int(cfg.epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)
    best, best_auc, step, epoch = None, -1.0, 0, 0
    from training.verifier_metrics import auroc

    while step < total:
        model.train()
        for b in _batches(seqs, cfg.batch_size, rng):
            if step >= total:
                break
            ids, mask = pad_batch([seqs[i] for i in b], tok.pad_token_id)
            loss = loss_fn(model(ids, mask), labels[b])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
        epoch += 1
        vs = _scores(model, vseqs, tok.pad_token_id) if val else []
        auc = auroc(vs, [e.label for e in val]) if val else None
        _log(f"scratch epoch {epoch}: loss {loss.item():.4f}, validation AUROC {auc}, {time.perf_counter() - t0:.0f} s")
        if auc is None or auc >= best_auc:
            best_auc = -1.0 if auc is None else auc
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if cfg.time_budget_s and time.perf_counter() - t0 > cfg.time_budget_s:
            _log(f"time budget {cfg.time_budget_s:.0f} s reached after {step} of {total} steps")
            break
    model.load_state_dict(best)
    return model, tok, body_config, (_scores(model, vseqs, tok.pad_token_id) if val else [])


def lam_head(train: list[Example], val: list[Example], cfg: VerifierConfig):
    """(classifier, tokenizer, body config, validation scores): the LAM's frozen body, a logistic-regression
    head on its [last; mean] hidden states, folded into the classifier's linear layer."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.lam)
    lm = AutoModelForCausalLM.from_pretrained(cfg.lam, dtype=torch.float32)
    body_config = lm.config.to_dict()
    model = build_classifier(body_config)
    model.body.load_state_dict(lm.model.state_dict())
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def feats(examples):
        seqs = _encode(tok, examples, cfg)
        out = []
        with torch.no_grad():
            for k in range(0, len(seqs), 32):
                ids, mask = pad_batch(seqs[k : k + 32], pad)
                out.append(model.features(ids, mask).numpy())
        return np.concatenate(out) if out else np.zeros((0, 2 * lm.config.hidden_size))

    x = feats(train)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced", random_state=cfg.seed)
    clf.fit((x - mu) / sd, [int(e.label) for e in train])
    w = clf.coef_[0] / sd
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor(w, dtype=torch.float32)[None])
        model.head.bias.fill_(float(clf.intercept_[0] - (w * mu).sum()))
    return model, tok, body_config, (_scores(model, _encode(tok, val, cfg), pad) if val else [])


def lam_judge_scores(examples: list[Example], cfg: VerifierConfig) -> list[float]:
    """The trained LAM asked to judge each transcript: P(yes) against P(no) at its next token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serving.chat_format import encode_text, render_chat_text, template_inputs

    tok = AutoTokenizer.from_pretrained(cfg.lam)
    lm = AutoModelForCausalLM.from_pretrained(cfg.lam, dtype=torch.float32).eval()
    yes, no = encode_text(tok, "yes")[0], encode_text(tok, "no")[0]
    out = []
    with torch.no_grad():
        for e in examples:
            body = render_transcript(tok, e.messages)
            msgs, _ = template_inputs(e.messages + [{"role": "user", "content": JUDGE_QUESTION}], None)
            full = render_chat_text(tok, msgs, None, add_generation_prompt=True)
            ids = encode_transcript(tok, body, cfg.max_len, cfg.head_tokens) + encode_text(tok, full[len(body):])
            logits = lm(input_ids=torch.tensor([ids])).logits[0, -1]
            out.append(float(torch.sigmoid(logits[yes] - logits[no])))
    return out


def _texts(tok, examples: list[Example]) -> list[str]:
    return [render_transcript(tok, e.messages) for e in examples]


def train_verifier(data: list[str], out_dir: str, cfg: VerifierConfig) -> dict:
    """Build the dataset, train both verifiers, measure them and the baselines per world; see the module doc."""
    import torch

    from data_collection.schema import SCHEMA_VERSION

    torch.set_num_threads(cfg.threads or 2)
    if cfg.lam and not (Path(cfg.lam) / "config.json").exists():
        raise FileNotFoundError(f"lam={cfg.lam} is not a Hugging Face model directory (no config.json); pass a "
                                "`lam train` export, e.g. runs/train/export")
    t0, out = time.perf_counter(), Path(out_dir)
    examples = load_examples(data, cfg.max_per_source, cfg.seed)
    train, val, test = split_by_task(examples, cfg.test_fraction, cfg.val_fraction, cfg.seed)
    if not train or not test or len({e.label for e in train}) < 2:
        raise ValueError(f"{len(examples)} episodes give {len(train)} training and {len(test)} held-out ones with "
                         f"{len({e.label for e in train})} label(s): the verifier needs successes and failures of many tasks")
    _log(f"{len(examples)} episodes: {len(train)} train, {len(val)} validation, {len(test)} held-out "
         f"({len({e.task for e in test})} tasks no training episode has)")
    out.mkdir(parents=True, exist_ok=True)
    envs = sorted({e.env for e in examples})
    meta_base = {"schema_version": SCHEMA_VERSION, "max_len": cfg.max_len, "head_tokens": cfg.head_tokens,
                 "envs": envs, "data": [str(d) for d in data], "config": cfg.model_dump()}
    methods: dict[str, list[float]] = {"agent's claim": claim_scores(test)}
    thresholds = {"agent's claim": 0.5}
    val_auc: dict[str, float] = {}

    model, tok, body, vs = train_scratch(train, val, cfg)
    thr = best_threshold(vs, [e.label for e in val])
    save_verifier(out / "scratch", model, tok, {**meta_base, "kind": "scratch", "body_config": body, "threshold": thr})
    # scored through the saved checkpoint: what `lam agent serve --verifier` and `lam eval --verifier` load
    methods["verifier (scratch)"] = load_verifier(out / "scratch", SCHEMA_VERSION).score_messages([e.messages for e in test])
    thresholds["verifier (scratch)"] = thr
    val_auc["scratch"] = verifier_metrics(vs, val, thr, cfg.flag_rate)["auroc"] if val else 0.0

    tfidf = TfidfBaseline(cfg.seed).fit(_texts(tok, train), [e.label for e in train])
    methods["TF-IDF + LR"] = tfidf.scores(_texts(tok, test))
    thresholds["TF-IDF + LR"] = best_threshold(tfidf.scores(_texts(tok, val)), [e.label for e in val])

    if cfg.lam:
        model, ltok, body, vs = lam_head(train, val, cfg)
        thr = best_threshold(vs, [e.label for e in val])
        save_verifier(out / "lam-head", model, ltok, {**meta_base, "kind": "lam-head", "body_config": body,
                                                       "threshold": thr, "lam": str(cfg.lam)})
        methods["verifier (LAM + head)"] = load_verifier(out / "lam-head", SCHEMA_VERSION).score_messages(
            [e.messages for e in test])
        thresholds["verifier (LAM + head)"] = thr
        val_auc["lam-head"] = verifier_metrics(vs, val, thr, cfg.flag_rate)["auroc"] if val else 0.0
        methods["LAM prompted to judge"] = lam_judge_scores(test, cfg)
        thresholds["LAM prompted to judge"] = best_threshold(lam_judge_scores(val, cfg), [e.label for e in val])

    best = max(val_auc, key=lambda k: val_auc[k] or 0.0)
    if (out / "best").exists():
        shutil.rmtree(out / "best")
    shutil.copytree(out / best, out / "best")
    rows = []
    for world in envs + ["all"]:
        idx = [i for i, e in enumerate(test) if world in ("all", e.env)]
        sub = [test[i] for i in idx]
        claimed = [i for i in idx if test[i].status_done]
        for name, scores in methods.items():
            s = [scores[i] for i in idx]
            row = {"world": world, "method": name, **verifier_metrics(s, sub, thresholds[name], cfg.flag_rate)}
            # the hard part: among episodes the agent judged done, real successes against false successes
            row["auroc_claimed"] = verifier_metrics([scores[i] for i in claimed], [test[i] for i in claimed],
                                                    thresholds[name], cfg.flag_rate)["auroc"]
            rows.append(row)
    policies: dict[str, dict] = {}
    for e in test:
        c = policies.setdefault(f"{e.env}/{e.policy}", {"episodes": 0, "successes": 0, "false_successes": 0})
        c["episodes"], c["successes"], c["false_successes"] = (c["episodes"] + 1, c["successes"] + e.label,
                                                               c["false_successes"] + e.false_success)
    report = {"episodes": {"train": len(train), "validation": len(val), "test": len(test)},
              "test_tasks": len({e.task for e in test}), "test_by_policy": policies,
              "validation_auroc": val_auc, "best": best, "flag_rate": cfg.flag_rate, "table": rows,
              "wall_s": round(time.perf_counter() - t0, 1), "out": str(out)}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def format_table(report: dict) -> str:
    """The report's table as markdown (bench/verifier.py and `lam train-verifier` print it)."""
    rate = round(100 * report["flag_rate"])
    lines = [f"| world | method | episodes | false successes | AUROC | AUROC (claimed done) | status accuracy | "
             f"caught at {rate}% flagged |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    for r in report["table"]:
        caught = r[f"caught_at_{rate}pct"]
        lines.append(f"| {r['world']} | {r['method']} | {r['episodes']} | {r['false_successes']} | {fmt(r['auroc'])} | "
                     f"{fmt(r['auroc_claimed'])} | {r['status_accuracy']:.1%} | {caught}/{r['false_successes']} |")
    return "\n".join(lines)
