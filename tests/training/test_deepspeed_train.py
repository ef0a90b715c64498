"""A real DeepSpeed engine (gloo on CPU) trains on a real collected dataset; the export reloads."""
import json

import pytest
import torch

from training.train import evaluate_loss


def test_loss_falls_and_metrics_are_logged(trained):
    out, summary = trained
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) >= 2 and losses[-1] < 0.6 * losses[0]
    assert all(r["tokens_per_s"] > 0 for r in rows if "loss" in r)
    assert summary["eval_loss"] < 1.5


def test_export_reloads_with_the_same_eval_loss(trained, bot_dataset):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_collection.schema import group_steps
    from data_collection.store import TrajectoryStore
    from envs.babyai import ACTION_NAMES
    from training.model import ActionLoss
    from training.samples import build_samples, episode_conversations
    from training.tokenizer import ChatEncoder

    out, summary = trained
    export = out / "export"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (export / name).exists(), name
    tok = AutoTokenizer.from_pretrained(export)
    assert tok.chat_template and tok.eos_token == "<|end|>"
    lm = AutoModelForCausalLM.from_pretrained(export)
    data, _ = bot_dataset
    eps = group_steps(TrajectoryStore(data).read_rows("train"))
    samples = build_samples(episode_conversations(eps), ChatEncoder(tok), 1024)
    split = max(1, int(len(samples) * 0.1))
    loss = evaluate_loss(ActionLoss(lm), samples[:split], tok.pad_token_id, 2048, torch.device("cpu"))
    assert loss == pytest.approx(summary["eval_loss"], rel=1e-4)
    # the model greedily produces a valid action for a training prompt
    conv = [{"role": "system", "content": "Reply with one action: " + ", ".join(ACTION_NAMES) + "."},
            {"role": "user", "content": eps[0][0].request + "\n" + eps[0][0].state}]
    ids = tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    gen = lm.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip() in ACTION_NAMES
