"""A tokenizer trained locally on the collected text, with the chat template training and serving share.

Byte-level BPE without the word-splitting regex, so frequent phrases of the rendered states
("steps forward and", "a red ball") become single tokens: compact prompts are training throughput.
Special tokens delimit every message, so an action is always tokenized on its own, the same way
in training and at inference.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

ROLES = ("system", "user", "assistant", "tool")
SPECIAL_TOKENS = ["<|pad|>", "<|end|>"] + [f"<|{r}|>" for r in ROLES]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, max_token_length: int = 24):
    """Train and return a `PreTrainedTokenizerFast` with our specials and chat template."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Pieces end at a newline and start at a number, so BPE learns semantic units
    # ("a grey ball ", "1 step forward and ", "2 steps right\n") and no token straddles two objects.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="merged_with_previous"),
            pre_tokenizers.Split(Regex(r"\d+"), behavior="merged_with_next"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=max_token_length,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


class ChatEncoder:
    """Encodes chat messages exactly as `apply_chat_template` + encode would, with per-token roles."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.end_id = tokenizer.convert_tokens_to_ids("<|end|>")
        self.role_ids = {r: tokenizer.convert_tokens_to_ids(f"<|{r}|>") for r in ROLES}

    def encode(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Token ids and labels (-100 except on assistant content and its closing <|end|>)."""
        ids, labels = [], []
        contents = self.tok([m["content"] for m in messages], add_special_tokens=False)["input_ids"]
        for m, content in zip(messages, contents):
            piece = [self.role_ids[m["role"]]] + content + [self.end_id]
            ids.extend(piece)
            if m["role"] == "assistant":
                labels.extend([-100] + content + [self.end_id])
            else:
                labels.extend([-100] * len(piece))
        return ids, labels


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
