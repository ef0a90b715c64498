"""Does the order of a BabyAI view's lines decide whether a small model learns to read it? (issue 17)

    python bench/babyai_view_order.py --data runs/quickstart/data --secs 240 [--orders as_written,first,last]

For each order, trains the tiny Llama from scratch on the same one-step samples (request + one view ->
the bot's action; no history, so only the view can say what to do) for the same wall time in a plain
PyTorch loop, then reports, on held-out episodes of the data, the teacher-forced accuracy of the first
action token by where the requested object is ("1 step left": the bot turns left there 99% of the time),
and the held-out success of the model as a policy (200 GoToLocal test tasks, 64 steps, T 0.7 and greedy).
Orders: `as_written` (the environment's), `first` (most relevant line first), `last` (most relevant last:
agent/prompt.py focus_view, what the harness's `focus` shows). Also prints the ceiling of a policy that
reads only the target's line perfectly (the bot's majority action per position). One JSON line at the end.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.prompt import focus_view, relevance, system_prompt  # noqa: E402
from data_collection.store import TrajectoryStore  # noqa: E402
from envs.babyai import BabyAIEnv  # noqa: E402
from envs.base import Action, Task  # noqa: E402
from envs.splits import TEST_SEEDS  # noqa: E402
from training.model import build_model  # noqa: E402
from training.tokenizer import train_tokenizer  # noqa: E402

CELLS = ["1 step left", "1 step right", "2 steps left", "2 steps right", "2 steps forward",
         "1 step forward and 1 step right", "1 step forward and 1 step left", "hidden"]


def shown(request: str, state: str, order: str) -> str:
    if order == "as_written":
        return state
    if order == "last":
        return focus_view(request, state)
    lines = state.split("\n")  # "first": the same ranking, most relevant first
    return "\n".join(sorted(lines, key=lambda line: relevance(request, line), reverse=True))


def target_cell(request: str, state: str) -> str:
    obj = re.sub(r"^go to (the |a )", "", request)
    line = next((x for x in state.split("\n") if x.startswith(f"a {obj} ")), None)
    return "hidden" if line is None else line[len(f"a {obj} "):]


def run(order: str, rows, held: set, tok, names: list[str], secs: float, seed: int) -> dict:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    end = tok.convert_tokens_to_ids("<|end|>")

    def prompt(request: str, state: str) -> list[int]:
        msgs = [{"role": "system", "content": system_prompt(names)},
                {"role": "user", "content": request + "\n" + shown(request, state, order)}]
        return tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"]

    def sample(r):
        p = prompt(r.request, r.state)
        return p, tok(r.action, add_special_tokens=False)["input_ids"] + [end]

    train = [sample(r) for r in rows if r.episode_id not in held]
    test = [(sample(r), target_cell(r.request, r.state)) for r in rows if r.episode_id in held]
    lm = build_model("tiny", vocab_size=len(tok), max_positions=512, seed=seed)
    opt = torch.optim.AdamW(lm.parameters(), lr=2e-3, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    t0, steps, order_ix = time.time(), 0, []
    while time.time() - t0 < secs:
        if not order_ix:
            order_ix = list(range(len(train)))
            rng.shuffle(order_ix)
        batch, order_ix = [train[i] for i in order_ix[:64]], order_ix[64:]
        n = max(len(p) + len(a) for p, a in batch)
        ids = torch.zeros((len(batch), n), dtype=torch.long)
        labels = torch.full((len(batch), n), -100)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, (p, a) in enumerate(batch):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p): len(p) + len(a)] = torch.tensor(a)
            mask[i, : len(p) + len(a)] = 1
        loss = lm(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        steps += 1
    lm.eval()
    ok, cnt = collections.Counter(), collections.Counter()
    with torch.no_grad():
        for (p, a), cell in test:
            pred = int(lm(input_ids=torch.tensor([p])).logits[0, -1].argmax())
            for key in (cell, "all"):
                ok[key] += pred == a[0]
                cnt[key] += 1
    out = {"order": order, "steps": steps, "teacher_forced": {k: round(ok[k] / cnt[k], 3) for k in ["all"] + CELLS if cnt[k]}}
    for temp in (0.7, 0.0):
        out[f"success_T{temp}"] = rollout(lambda r, s: prompt(r, s), lm, tok, end, temp, names)
    return out


def rollout(prompt, lm, tok, end: int, temp: float, names: list[str], n: int = 200, max_steps: int = 64) -> float:
    """n GoToLocal test tasks stepped together, one batched generate per step (left-padded)."""
    torch.manual_seed(1)
    envs = [BabyAIEnv() for _ in range(n)]
    obs = [e.reset(Task("babyai", "BabyAI-GoToLocal-v0", TEST_SEEDS[0] + i, "test")) for i, e in enumerate(envs)]
    live, wins = list(range(n)), 0
    for _ in range(max_steps):
        if not live:
            break
        ps = [prompt(obs[i].request, obs[i].state) for i in live]
        width = max(map(len, ps))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in ps])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
        with torch.no_grad():
            gen = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=temp > 0,
                              temperature=temp or None, top_k=None, eos_token_id=end, pad_token_id=0)
        nxt = []
        for i, toks in zip(live, gen[:, width:].tolist()):
            name = tok.decode(toks, skip_special_tokens=True).strip()
            result = envs[i].step(Action(name if name in names else "go forward"))
            obs[i] = result.observation
            wins += result.success
            if not result.success and not result.terminated:
                nxt.append(i)
        live = nxt
    return round(wins / n, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a BabyAI-GoToLocal dataset (lam collect / the quickstart's data)")
    ap.add_argument("--secs", type=float, default=240, help="training wall time per order")
    ap.add_argument("--orders", default="as_written,first,last")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = [r for r in TrajectoryStore(Path(a.data)).read_rows("train") if r.step >= 0]
    if not rows or any(r.env != "babyai" for r in rows[:100]):
        sys.exit(f"babyai_view_order: {a.data} holds no BabyAI training rows")
    names = json.loads(rows[0].messages)[0]["content"].split(":", 1)[1].strip().rstrip(".").split(", ")
    episodes = sorted({r.episode_id for r in rows})
    random.Random(a.seed).shuffle(episodes)
    held = set(episodes[: max(1, len(episodes) // 12)])
    tok = train_tokenizer([r.request + "\n" + r.state + "\n" + r.action for r in rows[:20000]]
                          + [system_prompt(names)], 2048)
    # ceiling: read the target's line perfectly, act as the bot most often did there
    table = collections.defaultdict(collections.Counter)
    for r in rows:
        if r.episode_id not in held:
            table[target_cell(r.request, r.state)][r.action] += 1
    test = [r for r in rows if r.episode_id in held]
    ceiling = sum(table[target_cell(r.request, r.state)].most_common(1)[0][0] == r.action for r in test) / len(test)
    print(f"{len(rows) - len(test)} training steps, {len(test)} held out; target-line ceiling {ceiling:.3f}", flush=True)
    results = []
    for order in a.orders.split(","):
        res = run(order, rows, held, tok, names, a.secs, a.seed)
        print(json.dumps(res), flush=True)
        results.append(res)
    print(json.dumps({"bench": "babyai_view_order", "data": a.data, "secs": a.secs, "ceiling": round(ceiling, 3),
                      "results": results}))


if __name__ == "__main__":
    main()
