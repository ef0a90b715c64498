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
# Every message is <|role|>content<|end|> (text conversations render exactly as before tools existed).
# With tools (Hermes style, as Qwen's template): the system message lists them in <tools>, one signature
# per line, `name(param: type, optional?: type)`; descriptions are left out: a model trained from scratch
# has no language to read them with, and they made a tool-world sample ~3x longer (bench/RESULTS.md). An
# assistant's calls follow its content as <tool_call>{"name": ..., "arguments": {...}}</tool_call>, and
# results come back as messages of the tool role. serving/chat_format.py parses the calls back.
# One line, no whitespace control: every character outside the tags is output, newlines come from
# the quoted strings, so nothing depends on jinja's trimming rules.
TOOLS_HEAD = "# Tools\nYou may call one or more functions. Their signatures:\n<tools>\n"
TOOLS_TAIL = ('</tools>\nFor each call reply with <tool_call>{"name": <function-name>, "arguments": '
              "<args-json-object>}</tool_call>")
CHAT_TEMPLATE = (
    "{% set ns = namespace(skip=false) %}"
    "{% if tools %}<|system|>"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
    "{% set ns.skip = true %}{% endif %}"
    "{{ " + repr(TOOLS_HEAD) + " }}{% for t in tools %}"
    "{% set f = t['function'] if t['function'] is defined else t %}"
    "{% set p = f['parameters'] if f['parameters'] is defined and f['parameters'] else {} %}"
    "{% set req = p['required'] if p['required'] is defined and p['required'] else [] %}"
    "{{ f['name'] }}({% for k, v in (p['properties'] if p['properties'] is defined and p['properties'] else {}).items() %}"
    "{{ k }}{% if k not in req %}?{% endif %}: {{ v['type'] if v['type'] is defined else 'any' }}"
    "{% if not loop.last %}, {% endif %}{% endfor %}{{ ')\\n' }}{% endfor %}"
    "{{ " + repr(TOOLS_TAIL) + " }}<|end|>{% endif %}"
    "{% for m in messages %}{% if not (loop.first and ns.skip) %}"
    "<|{{ m['role'] }}|>{{ m['content'] or '' }}"
    "{% if m.tool_calls %}{% for tc in m.tool_calls %}"
    "<tool_call>{{ {'name': tc['function']['name'], 'arguments': tc['function']['arguments']} | tojson }}</tool_call>"
    "{% endfor %}{% endif %}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def signature_line(tool: dict) -> str:
    """One tool as CHAT_TEMPLATE lists it (tokenizer training texts use this; the template is what renders)."""
    f = tool.get("function", tool)
    p = f.get("parameters") or {}
    req = p.get("required") or []
    args = ", ".join(f"{k}{'' if k in req else '?'}: {v.get('type', 'any') if isinstance(v, dict) else 'any'}"
                     for k, v in (p.get("properties") or {}).items())
    return f"{f['name']}({args})\n"


# "words": a tool signature line (as the template writes it) is one piece, so BPE compresses the constant
# signatures into long phrases; everywhere else a word ([A-Za-z_]+), each digit, and each run of other
# characters are pieces of their own. A value is then the same tokens wherever it appears (the
# request "to Mae.", the call {"user": "Mae"}, the result "USR357" and the reply), so copying it is
# a token-for-token copy, and an unseen value is spelled with pieces training has seen.
WORD_PIECES = r'\{"type": "function"[^\n]*|[A-Za-z_]\w*\([\w?:, ]*\)\n|[A-Za-z_]+|\d|[^A-Za-z_\d\n]+|\n'
# "spaced": a word with the space before it is one piece (a number too; a newline stands alone), so a
# colour or an object type is the same token in the request ("go to the red key") and in every
# observation line ("a red key 1 step left"), wherever the line ends.
SPACED_PIECES = r" ?[^ \n]+| +|\n"
TOKENIZER_STYLES = ("phrases", "words", "spaced")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, max_token_length: int = 24, style: str = "phrases"):
    """Train and return a `PreTrainedTokenizerFast` with our specials and chat template.

    style "phrases" (text worlds): pieces end at a newline and start at a number, so BPE learns semantic
    units ("a grey ball ", "1 step forward and ", "2 steps right\n") and no token straddles two objects.
    style "words" (function calls): see WORD_PIECES."""
    from transformers import PreTrainedTokenizerFast

    if style not in TOKENIZER_STYLES:
        raise ValueError(f"unknown tokenizer style {style!r}: expected one of {', '.join(TOKENIZER_STYLES)}")
    tok = Tokenizer(models.BPE())
    if style == "phrases":
        split = [pre_tokenizers.Split("\n", behavior="merged_with_previous"),
                 pre_tokenizers.Split(Regex(r"\d+"), behavior="merged_with_next")]
    elif style == "spaced":
        split = [pre_tokenizers.Split(Regex(SPACED_PIECES), behavior="isolated")]
    else:
        split = [pre_tokenizers.Split(Regex(WORD_PIECES), behavior="isolated")]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        split + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
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


class SampleError(ValueError):
    """The data or the tokenizer cannot make a faithful training sample; the message says which and why."""


class ChatEncoder:
    """Conversations -> (ids, labels, action spans) through the tokenizer's own chat template, by the
    code the server renders requests with (serving/chat_format.py). Works for any tokenizer with a
    template (the project's, or a Hugging Face model's via `apply_chat_template(..., tools=...)`): no
    special token is ever looked up by name, so none can silently become <unk>."""

    def __init__(self, tokenizer, name: str = "the tokenizer", verify_every: int = 64, value_marks: bool = False) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise SampleError(f"{name} has no chat template: training renders every sample through the model's "
                              "own template (add a chat_template to its tokenizer_config.json)")
        self.tok, self.name = tokenizer, name
        self.unk_id = tokenizer.unk_token_id
        self._tools_ok: bool | None = None
        self.verify_every, self._seen = verify_every, 0
        self.value_marks = value_marks  # render the marked view (serving/value_marks.py), as the server does

    def _check_tools(self, where: str) -> None:
        from serving.chat_format import template_supports_tools

        if self._tools_ok is None:
            self._tools_ok = template_supports_tools(self.tok)
        if not self._tools_ok:
            raise SampleError(f"{where}: a tool-space conversation, but the chat template of {self.name} renders no "
                              "tools or tool calls; use a model whose template supports tools (e.g. a ChatML/Hermes "
                              "one, as Qwen's) or the project tokenizer (model: tiny/small)")

    def encode(self, conv) -> tuple[list[int], list[int], list[tuple[int, int]]]:
        """Token ids, labels (-100 except on the learned assistant messages) and their (start, end) spans.
        Span of message a = tokens of render(messages[:a+1]) past render(messages[:a], generation prompt):
        both must be prefixes, token for token, of the whole conversation's tokens.

        The whole conversation is tokenized once; each prefix must be a prefix of its text and end on one
        of its token boundaries (offsets). Every `verify_every`-th conversation (the first included) is
        also checked the slow way, each prefix tokenized on its own, which is what the server does."""
        from serving.chat_format import encode_text, render_chat_text, template_inputs

        where = conv.source or "a conversation"
        if conv.tools or any(m.get("tool_calls") for m in conv.messages):
            self._check_tools(where)
        try:
            msgs, tools = template_inputs(conv.messages, conv.tools)
            if self.value_marks and tools:  # tool conversations only: a text action copies no value
                from serving.value_marks import marked_view

                msgs = marked_view(msgs)[0]
            texts = [render_chat_text(self.tok, msgs, tools, add_generation_prompt=False)]
            for a in conv.labeled:
                texts += [render_chat_text(self.tok, msgs[:a], tools, add_generation_prompt=True),
                          render_chat_text(self.tok, msgs[: a + 1], tools, add_generation_prompt=False)]
        except SampleError:
            raise
        except Exception as e:  # the template refuses a message (jinja raise_exception, bad role order)
            raise SampleError(f"{where}: the chat template of {self.name} cannot render it: {e}") from e
        full = self.tok(texts[0], add_special_tokens=False, return_offsets_mapping=True)
        ids, ends = full["input_ids"], {end: i + 1 for i, (_, end) in enumerate(full["offset_mapping"])}
        ends[0] = 0
        self._seen += 1
        exact = encode_text(self.tok, texts[1:]) if len(texts) > 1 and (self._seen - 1) % self.verify_every == 0 else None
        labels, spans = [-100] * len(ids), []
        for k, a in enumerate(conv.labeled):
            before, after = texts[1 + 2 * k], texts[2 + 2 * k]
            start, end = ends.get(len(before)), ends.get(len(after))
            stable = (texts[0].startswith(after) and after.startswith(before) and start is not None
                      and end is not None and end > start)
            if stable and exact is not None:
                stable = exact[2 * k] == ids[:start] and exact[2 * k + 1] == ids[:end]
            if not stable:
                raise SampleError(f"{where}: the chat template of {self.name} is not prefix-stable at message {a} "
                                  "(the prompt for that step is not, token for token, the start of the conversation "
                                  "that continues it), so training and serving would see different tokens")
            labels[start:end] = ids[start:end]
            spans.append((start, end))
        if self.unk_id is not None and self.unk_id in ids:
            raise SampleError(f"{where}: {self.name} encodes part of it as its unknown token "
                              f"{self.tok.unk_token!r}; it cannot represent this conversation")
        return ids, labels, spans


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
