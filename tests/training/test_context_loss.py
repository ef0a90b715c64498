"""train.context_loss_weight: the action tokens keep weight 1, every other real token of the conversation
adds its language-model loss at the given weight; padding never counts; the reported (eval) loss stays
the action-token loss, so runs with and without it compare (training/model.py ActionLoss)."""
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from training.model import ActionLoss


def _batch():
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    labels = torch.full_like(ids, -100)
    labels[0, 4:6] = ids[0, 4:6]  # two action tokens in row 0
    labels[1, 2] = ids[1, 2]  # one in row 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_context_loss_weighs_the_other_tokens_and_never_the_padding():
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2))
    b = _batch()
    logits = lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
    ce = nn.functional.cross_entropy(logits.reshape(-1, 32), b["input_ids"][:, 1:].reshape(-1), reduction="none").view(2, 5)
    action = b["labels"][:, 1:] != -100
    real = b["attention_mask"][:, 1:].bool()
    other = real & ~action
    assert int(action.sum()) == 3 and int(other.sum()) == 4  # row 1's padding (3 positions) is neither

    plain, weighted = ActionLoss(lm).train(), ActionLoss(lm, context_weight=0.25).train()
    loss0, n0 = plain(**b)
    loss1, n1 = weighted(**b)
    assert n0 == n1 == 3
    assert torch.allclose(loss0, ce[action].mean(), atol=1e-5)
    expected = (ce[action].sum() + 0.25 * ce[other].sum()) / (3 + 0.25 * 4)
    assert torch.allclose(loss1, expected, atol=1e-5) and not torch.allclose(loss1, loss0, atol=1e-3)
    # what evaluation reports is the action-token loss, whatever the weight
    assert torch.allclose(weighted.eval()(**b)[0], loss0, atol=1e-5)
