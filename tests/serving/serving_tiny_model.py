"""Build a tiny random chat model (Llama, hidden 64, 2 layers) for serving tests; nothing is downloaded.

    python tests/serving/serving_tiny_model.py /tmp/tiny-lam     # writes a loadable model dir
"""
from __future__ import annotations

import sys
from pathlib import Path

# the project template trained models export (text renders as <|role|>content<|end|>; tools Hermes-style):
# the server serves tools only through a template that renders them
from training.tokenizer import CHAT_TEMPLATE  # noqa: E402
API_KEY = "test-key"  # key of the test servers
SPECIAL_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|pad|>"]

# A few lines of text are enough for a byte-level BPE with a couple of hundred merges.
_CORPUS = [
    "The agent moves left, then right, then picks up the key and opens the door.",
    "Hello! How can I help you today? Please call the tool with JSON arguments.",
    '{"name": "move", "arguments": {"direction": "north", "steps": 3}}',
    "Observation: a red ball is two cells ahead. Action: forward.",
    "def act(obs):\n    return {'action': 'turn_left'}\n",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?-_()[]{}<>/\\'\"",
] * 20


def build_tokenizer(vocab_size: int = 400):
    """Train a ByteLevel BPE tokenizer locally and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def build_tiny_model(out_dir: str | Path, *, max_position_embeddings: int = 256, seed: int = 0,
                     initializer_range: float = 0.5) -> Path:
    """Save a random LlamaForCausalLM + tokenizer to `out_dir` and return the path.

    initializer_range is large on purpose: peaked logits make greedy decoding free of near-ties, so
    batched vs. unbatched greedy outputs can be compared exactly despite float rounding differences.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def chat_prompt(backend, text: str) -> list[int]:
    """Token ids of a one-user-message chat prompt, as the server builds them."""
    return backend.encode(backend.render_chat([{"role": "user", "content": text}]))


if __name__ == "__main__":
    print(build_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny-lam"))


def patch_replicas(monkeypatch, backend, name: str, value) -> None:
    """monkeypatch.setattr on an EmbeddedBackend: every replica worker calls the engine's own model methods and
    reads its eos ids (serving/replica.py), so one patch reaches them all."""
    monkeypatch.setattr(backend, name, value)
