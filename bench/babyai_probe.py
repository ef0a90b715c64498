"""Does a BabyAI model read its observation? Two probes of one export, no server needed.

    python bench/babyai_probe.py --model runs/quickstart/train/export --data runs/quickstart/eval/expert

1. Single-step prompts (the system turn, then "go to the red key" and one observation), rendered by the
   model's own chat template: the probability of each turn/forward action where the target is alone and
   1 step left, 1 step right, 2 steps forward, ..., and with distractors. A model that reads the observation
   turns towards the key; one that does not gives the same distribution for every prompt.
2. Teacher-forced action accuracy on the bot's episodes in --data (GoTo missions), split by where the target
   is in the observation the bot acted on (steps forward, steps to the side; capped at 3 and 2), with the
   bot's own choice there: the bot is deterministic in most of these cells (e.g. 1 step left -> turn left).
"""
from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SYSTEM = "Reply with one action: turn left, turn right, go forward, pick up, drop, toggle, done."
ACTIONS = ("turn left", "turn right", "go forward")
PROMPTS = {
    "key alone, 1 step left": "a red key 1 step left",
    "key alone, 1 step right": "a red key 1 step right",
    "key alone, 1 step forward": "a red key 1 step forward",
    "key alone, 2 steps forward": "a red key 2 steps forward",
    "key 1 step left + 2 others": "a red key 1 step left\na blue ball 1 step right\na green box 2 steps forward",
    "key 1 step right + 2 others": "a blue ball 1 step left\na red key 1 step right\na green box 2 steps forward",
    "key 2 forward 1 left + 1 other": "a red key 2 steps forward and 1 step left\na blue ball 1 step right",
}


def action_probs(model, tok, user: str) -> dict[str, float]:
    import torch

    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])
    out = {}
    for a in ACTIONS:
        ids = tok(prompt + a + tok.eos_token, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
        out[a] = float(sum(lp[i - 1, ids[i]] for i in range(n, len(ids))).exp())
    return out


def target_cell(request: str, state: str) -> str:
    target = re.sub(r"^go to (the |a )", "", request)
    line = next((ln for ln in state.splitlines() if target in ln), None)
    if line is None:
        return "not in view"
    m = re.search(r"(\d+) steps? forward", line)
    f = int(m.group(1)) if m else 0
    m = re.search(r"(\d+) steps? (left|right)", line)
    s = (int(m.group(1)) * (1 if m.group(2) == "right" else -1)) if m else 0
    return f"{min(f, 3)} forward, {abs(max(-2, min(2, s)))} {'left' if s < 0 else 'right' if s > 0 else 'ahead'}"


def teacher_forced(model, tok, data: str, episodes: int) -> dict:
    import torch

    from data_collection.schema import group_steps
    from data_collection.store import TrajectoryStore
    from training.samples import build_samples, collate, episode_conversations
    from training.tokenizer import ChatEncoder

    enc = ChatEncoder(tok)
    cells: dict = collections.defaultdict(lambda: {"right": 0, "steps": 0, "bot": collections.Counter()})
    eps = [ep for ep in group_steps(TrajectoryStore(Path(data)).read_rows()) if ep[0].request.startswith("go to")]
    for ep in eps[:episodes]:
        rows = [r for r in ep if r.step >= 0]
        samples = build_samples(episode_conversations([rows]), enc, 1 << 14)
        b = collate(samples, list(range(len(samples))), tok.pad_token_id or 0)
        with torch.no_grad():
            pred = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].argmax(-1)
        right = []
        for r in range(len(samples)):
            t = b["labels"][r, 1:]
            pos = (t != -100).nonzero().flatten().tolist()
            spans, cur = [], []
            for j in pos:
                if cur and j != cur[-1] + 1:
                    spans.append(cur)
                    cur = []
                cur.append(j)
            spans += [cur] if cur else []
            right += [all(pred[r, j] == t[j] for j in s) for s in spans]
        for ok, row in zip(right, rows):
            c = cells[target_cell(row.request, row.state)]
            c["right"] += ok
            c["steps"] += 1
            c["bot"][row.action] += 1
    return cells


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a Hugging Face export (lam train's OUT/export)")
    ap.add_argument("--data", default=None, help="a dataset of bot episodes on GoTo missions (e.g. an eval's expert/)")
    ap.add_argument("--episodes", type=int, default=200)
    a = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from training.tokenizer import load_tokenizer

    torch.set_num_threads(2)
    tok = load_tokenizer(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model).eval()
    print("| go to the red key, facing north | " + " | ".join(f"P({x})" for x in ACTIONS) + " |")
    print("|---|" + "---|" * len(ACTIONS))
    for name, obs in PROMPTS.items():
        p = action_probs(model, tok, "go to the red key\nfacing north, carrying nothing\n" + obs)
        print(f"| {name} | " + " | ".join(f"{p[x]:.2f}" for x in ACTIONS) + " |")
    if a.data:
        cells = teacher_forced(model, tok, a.data, a.episodes)
        print("\n| target in the bot's view | steps | bot's choice | model right (teacher-forced) |")
        print("|---|---|---|---|")
        total = [0, 0]
        for cell, c in sorted(cells.items()):
            top, n = c["bot"].most_common(1)[0]
            print(f"| {cell} | {c['steps']} | {top} {100 * n / c['steps']:.0f}% | {100 * c['right'] / c['steps']:.0f}% |")
            total[0] += c["right"]
            total[1] += c["steps"]
        print(f"| all | {total[1]} | | {100 * total[0] / max(1, total[1]):.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
