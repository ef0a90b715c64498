"""The vLLM weight-update path (serving/vllm_weights.py) without vLLM: every check runs before the engine is
called, and an accepted update reaches every worker's model through our worker extension.

    PYTHONPATH=$PWD .venv/bin/python -m pytest tests/serving/test_weight_update_vllm.py -q

The one stand-in is the engine handle (FakeEngine): what `vllm serve`'s /collective_rpc and /reset_prefix_cache
do, i.e. call the named method on each worker. Its workers hold real transformers models; `load_weights` is
vLLM's model method, which takes (Hugging Face name, tensor) pairs.
"""
from __future__ import annotations

import pytest
import torch
from serving_tiny_model import build_tiny_model

from serving.vllm_backend import build_vllm_command
from serving.vllm_weights import WORKER_EXTENSION, LamWeightsWorker, VLLMWeights, safetensors_index
from serving.weight_update import WeightUpdateError


class _VLLMModel(torch.nn.Module):
    """A transformers model with vLLM's `load_weights(iterable of (name, tensor))`."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def load_weights(self, weights):
        state = self.lm.state_dict()
        loaded = set()
        for name, t in weights:
            state[name].copy_(t)
            loaded.add(name)
        return loaded


class _Runner:
    def __init__(self, model):
        self.model = model


class FakeEngine:
    """Stands in for the vLLM engine handle only: runs the RPC on each worker (here: our extension class)."""

    def __init__(self, model_dir, workers: int = 2):
        from transformers import AutoModelForCausalLM

        self.workers = []
        for _ in range(workers):
            w = LamWeightsWorker()
            w.model_runner = _Runner(_VLLMModel(AutoModelForCausalLM.from_pretrained(model_dir)))
            self.workers.append(w)
        self.calls: list[tuple] = []

    def collective_rpc(self, method, args):
        self.calls.append((method, tuple(args)))
        return [getattr(w, method)(*args) for w in self.workers]

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache", ()))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    root = tmp_path_factory.mktemp("vllm-weights")
    a, b = build_tiny_model(root / "a", seed=0), build_tiny_model(root / "b", seed=1)
    cfg = AutoModelForCausalLM.from_pretrained(a).config
    cfg.intermediate_size = 96
    torch.manual_seed(2)
    LlamaForCausalLM(cfg).save_pretrained(root / "wide")
    AutoModelForCausalLM.from_pretrained(b).to(torch.float16).save_pretrained(root / "half")
    state = load_file(str(b / "model.safetensors"))
    extra = {**state, "model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)}
    (root / "extra").mkdir()
    save_file(extra, str(root / "extra" / "model.safetensors"))
    (root / "short").mkdir()
    save_file({k: v for k, v in state.items() if "layers.1." not in k}, str(root / "short" / "model.safetensors"))
    return {k: str(root / k) for k in ("a", "b", "wide", "half", "extra", "short")} | {"root": root}


def _params(engine):
    return [{k: v.clone() for k, v in w.model_runner.model.lm.state_dict().items()} for w in engine.workers]


def test_an_update_reaches_every_worker_and_drops_the_prefix_cache(exports):
    from safetensors.torch import load_file

    engine = FakeEngine(exports["a"])
    w = VLLMWeights(engine, exports["a"])
    card = w.update_weights(exports["b"], "rl-iter-1")
    assert card == {"version": 1, "label": "rl-iter-1", "source": exports["b"]}
    assert engine.calls[0][0] == "lam_load_weights" and engine.calls[-1] == ("reset_prefix_cache", ())
    want = load_file(exports["b"] + "/model.safetensors")
    for params in _params(engine):
        for name, t in want.items():
            assert torch.equal(params[name], t), name


@pytest.mark.parametrize("which, words", [("wide", "shape"), ("half", "float16"), ("extra", "not in the served"),
                                          ("short", "missing"), ("nowhere", "neither")])
def test_a_mismatched_update_is_refused_before_vllm_is_called(exports, which, words):
    engine = FakeEngine(exports["a"], workers=1)
    before = _params(engine)
    w = VLLMWeights(engine, exports["a"])
    path = exports.get(which, str(exports["root"] / which))
    with pytest.raises(WeightUpdateError, match=words):
        w.update_weights(path, "bad")
    assert engine.calls == []  # nothing reached the engine
    assert w.weights_card()["version"] == 0
    after = _params(engine)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])


def test_a_worker_that_loaded_something_else_is_reported(exports):
    class Partial:  # one worker of two answered for fewer tensors than were sent
        def collective_rpc(self, method, args):
            return [{"tensors": len(safetensors_index(args[0]))}, {"tensors": 1}]

        def reset_prefix_cache(self):
            raise AssertionError("must not run after a failed load")

    w = VLLMWeights(Partial(), exports["a"])
    with pytest.raises(WeightUpdateError, match="worker 1 loaded"):
        w.update_weights(exports["b"])
    assert w.weights_card()["version"] == 0


def test_headers_are_read_without_loading_and_the_command_adds_the_extension(exports):
    index = safetensors_index(exports["a"])
    assert index["model.embed_tokens.weight"][1] == "float32" and len(index) > 5
    cmd = build_vllm_command(exports["a"], vllm_bin="/opt/vllm", weight_updates=True)
    assert cmd[cmd.index("--worker-extension-cls") + 1] == WORKER_EXTENSION
    assert "--worker-extension-cls" not in build_vllm_command(exports["a"], vllm_bin="/opt/vllm")
