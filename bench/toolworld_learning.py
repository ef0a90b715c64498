"""What a from-scratch model learns of the tool world, and how fast: a learning-curve probe (issue 16).

    lam collect --env toolworld --levels L1 --episodes 4000 --workers 0 --out /tmp/l1
    python bench/toolworld_learning.py --data /tmp/l1 --levels L1 --batch 32 --steps 400 [--no-schemas] \
        [--tokenizer words|chars] [--tokenizer-dir DIR]
    python bench/toolworld_learning.py --data /tmp/l1 --levels L1 --score /tmp/l1m/export   # a lam train export

Trains the `tiny` Llama of training/model.py in-process (plain AdamW, no DeepSpeed: the point is what is
learned per token, not the engine) on the dataset's conversations, rendered by the one chat template
(training/samples.py, serving/chat_format.py), and every --every steps scores teacher-forced action
exact match on expert episodes of held-out test tasks (unseen names and values) and of train-split tasks:
`call` = the first call of the episode right token for token, `act` = actions right, `ep` = episodes
whose every action is right. The gap between the train and test columns is the copy problem: a value
the request names must be copied into the call, and test values are never seen in training.

--no-schemas drops the tools list from the system turn (a diagnostic: far shorter samples).
--tokenizer chars splits every letter outside the tool schemas into its own token, so an unseen name is
a sequence of well-trained tokens (the words tokenizer splits it into rare BPE pieces).
"""
from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

CHAR_PIECES = r'\{"type": "function"[^\n]*|[A-Za-z]|\d|[^A-Za-z\d\n]+|\n'


def held_out(encoder, levels: list[str], split: str, n: int, schemas: bool):
    from agent.episode import RunnerConfig, run_episode
    from agent.policies import ExpertPolicy
    from data_collection.schema import episode_rows
    from envs.base import Task
    from envs.registry import make_env
    from training.samples import episode_conversations

    env, out = make_env("toolworld"), []
    for lv in levels:
        for s in range(n // len(levels)):
            task = Task("toolworld", lv, 1_000_000 + 7 * s + int(lv[1:]), split)
            conv = episode_conversations([episode_rows(run_episode(env, ExpertPolicy(), task, RunnerConfig(max_steps=12)))])[0]
            if not schemas:
                conv.tools = []
            out.append(encoder.encode(conv))
    return out


def score(lm, encoded) -> str:
    import torch

    lm.eval()
    first = acts_ok = acts = eps = 0
    with torch.no_grad():
        for ids, _labels, spans in encoded:
            pred = lm(torch.tensor([ids])).logits[0].argmax(-1).tolist()
            right = [all(pred[i - 1] == ids[i] for i in range(a, b)) for a, b in spans]
            first += right[0]
            acts_ok += sum(right)
            acts += len(right)
            eps += all(right)
    lm.train()
    return f"call {first}/{len(encoded)} act {acts_ok}/{acts} ep {eps}/{len(encoded)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--levels", default="L1")
    ap.add_argument("--tokenizer", choices=["words", "chars"], default="words")
    ap.add_argument("--tokenizer-dir", help="a trained project tokenizer to use instead of training one")
    ap.add_argument("--no-schemas", action="store_true")
    ap.add_argument("--batch", type=int, default=32, help="samples per step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=3600)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--context-weight", type=float, default=0.5)
    ap.add_argument("--held-out", type=int, default=60, help="episodes per split scored")
    ap.add_argument("--score", metavar="EXPORT", help="only score a trained export (e.g. lam train's OUT/export)")
    a = ap.parse_args()
    if a.score:  # the same probe on a model `lam train` made
        from transformers import AutoModelForCausalLM

        import training.tokenizer as tk

        tok, lm = tk.load_tokenizer(a.score), AutoModelForCausalLM.from_pretrained(a.score).eval()
        enc = tk.ChatEncoder(tok)
        levels = a.levels.split(",")
        for split in ("test", "train"):
            print(f"{split}: {score(lm, held_out(enc, levels, split, a.held_out, not a.no_schemas))}")
        return

    import torch

    import training.tokenizer as tk
    from data_collection.schema import group_steps
    from data_collection.store import TrajectoryStore
    from training.model import ActionLoss, build_model
    from training.samples import build_samples, collate, episode_conversations, tokenizer_texts

    torch.set_num_threads(2)
    torch.manual_seed(0)
    convs = episode_conversations(group_steps(TrajectoryStore(Path(a.data)).read_rows("train")))
    if a.tokenizer_dir:
        tok = tk.load_tokenizer(a.tokenizer_dir)
    else:
        if a.tokenizer == "chars":
            tk.WORD_PIECES = CHAR_PIECES  # this process only: the bench's variant, not a project style
        tok = tk.train_tokenizer(tokenizer_texts(convs[:20000]), vocab_size=2048, style="words")
    if a.no_schemas:
        for c in convs:
            c.tools = []
    encoder = tk.ChatEncoder(tok)
    samples = build_samples(convs, encoder, 4096)
    levels = a.levels.split(",")
    probes = {split: held_out(encoder, levels, split, a.held_out, not a.no_schemas) for split in ("test", "train")}
    print(f"{len(samples)} samples, mean {sum(len(s.ids) for s in samples) / len(samples):.0f} tokens; "
          f"tokenizer {a.tokenizer_dir or a.tokenizer}, schemas {'off' if a.no_schemas else 'on'}, batch {a.batch}", flush=True)

    lm = build_model("tiny", vocab_size=len(tok), max_positions=4096)
    model = ActionLoss(lm, context_weight=a.context_weight)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, s / a.steps)))))
    rng, order = random.Random(0), list(range(len(samples)))
    t0, step, tokens = time.time(), 0, 0
    while step < a.steps and time.time() - t0 < a.seconds:
        rng.shuffle(order)
        for b in range(0, len(order) - a.batch + 1, a.batch):
            batch = collate(samples, order[b : b + a.batch], tok.pad_token_id or 0)
            loss, _ = model(**batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad()
            step, tokens = step + 1, tokens + int(batch["attention_mask"].sum())
            if step % a.every == 0 or step == a.steps:
                print(f"step {step} {time.time() - t0:.0f}s {tokens / 1e6:.2f}M tokens loss {loss.item():.3f} | "
                      f"test {score(lm, probes['test'])} | train-split {score(lm, probes['train'])}", flush=True)
            if step >= a.steps or time.time() - t0 > a.seconds:
                break


if __name__ == "__main__":
    main()
