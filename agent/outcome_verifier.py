"""The outcome verifier at run time: read an episode's transcript, score P(the environment verified success).

    v = load_verifier("runs/verifier/best")          # a `lam train-verifier` checkpoint
    v.verify(steps, claimed_done=True)               # {"score": 0.03, "model": "scratch:...", "flagged": True}

Trained by training/verifier.py (`lam train-verifier`); it lives here, not in training/, because the agent
API (agent/sessions.py) scores sessions with it and the agent layer may not import training/.

The transcript is what the agent saw: the conversation of its last step (request, states or tool
results, its earlier actions), then that step's action and what came back, rendered by the one chat
template code (serving/chat_format.py) without the system prompt or tool schemas (constant per world).
Never the environment's reward or verdict. In text spaces (BabyAI) a trailing claim ("done") is
left out with the state it was made in: the environment ends a successful episode before the agent can
claim, so a claim step exists only in failures and would give the answer away.

A checkpoint directory holds `verifier.json` (kind, threshold, tokenizer digest, record and transcript
schema versions), `model.safetensors` and `tokenizer/`; loading one whose tokenizer or schema differs
from what it was trained with is refused with VerifierCheckpointError.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

TRANSCRIPT_VERSION = 2  # bump when transcript_messages changes what a verifier reads
CHECKPOINT_FILE = "verifier.json"


class VerifierCheckpointError(ValueError):
    """A verifier checkpoint that is missing, damaged, or made for another tokenizer or schema."""


@dataclass
class TranscriptStep:
    """The parts of one step a verifier reads; made from a StepLog (agent) or a StepRow (records) alike."""

    messages: list[dict]  # what the policy was given (first attempt)
    action: str  # grounded action: a name, <tool_call> text, or a closing reply
    raw_output: str
    valid: bool
    feedback: str  # what came back (tool results joined by newlines, an error, or "")
    claim: str  # "done" | "give_up" | ""
    tool_space: bool


def transcript_messages(steps: list[TranscriptStep], final_state: str = "") -> list[dict]:
    """The transcript as chat messages (see the module docstring for what is in it and why). final_state:
    the state after the last executed action (text spaces; a tool space's results already show it)."""
    if not steps:
        return []
    last, act = steps[-1], True
    if not last.tool_space and last.claim:  # text-space claim: not an action, and only failures have one
        if len(steps) > 1:
            last = steps[-2]
        else:
            act = False  # claimed at once: the request and the first state, nothing done
    msgs = [dict(m) for m in last.messages if m.get("role") not in ("system", "developer")]
    msgs += _action_messages(last) if act else []
    if final_state and not last.tool_space and act:
        # the feedback (if any) and the state it left, one user turn as the prompt renderer makes it
        if msgs[-1]["role"] == "user":
            msgs[-1] = {"role": "user", "content": msgs[-1]["content"] + "\n" + final_state}
        else:
            msgs.append({"role": "user", "content": final_state})
    return msgs


def _action_messages(s: TranscriptStep) -> list[dict]:
    from serving.chat_format import parse_tool_calls

    if not s.valid:
        return [{"role": "assistant", "content": s.raw_output}, {"role": "user", "content": s.feedback}]
    if not s.tool_space:
        out = [{"role": "assistant", "content": s.action}]
        return out + ([{"role": "user", "content": s.feedback}] if s.feedback else [])
    content, calls = parse_tool_calls(s.action)
    if not calls:
        return [{"role": "assistant", "content": s.action}]
    for i, c in enumerate(calls):
        c["id"] = f"call_{i}"  # ids are random at parse time; the template does not render them
    return [{"role": "assistant", "content": content, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_0", "content": s.feedback}]


def render_transcript(tokenizer, messages: list[dict]) -> str:
    """The transcript through the tokenizer's chat template (the one code path serving and training use)."""
    from serving.chat_format import render_chat_text, template_inputs

    msgs, _ = template_inputs(messages, None)
    return render_chat_text(tokenizer, msgs, None, add_generation_prompt=False)


def encode_transcript(tokenizer, text: str, max_len: int, head: int) -> list[int]:
    """Token ids, at most max_len: the first `head` (the request) and the last ones (how it ended)."""
    from serving.chat_format import encode_text

    ids = encode_text(tokenizer, text)
    if len(ids) <= max_len:
        return ids
    return ids[:head] + ids[len(ids) - (max_len - head):]


def tokenizer_digest(tokenizer) -> str:
    """What a token id means: the tokenizer's whole definition and its chat template."""
    body = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else repr(tokenizer.get_vocab())
    return hashlib.sha256((body + "\x00" + (tokenizer.chat_template or "")).encode()).hexdigest()[:16]


def build_classifier(body_config: dict):
    """The classifier: a transformer body (Llama from scratch, or the trained LAM's) and a linear head on
    [last token; mean of tokens] of its last hidden states."""
    import torch
    from torch import nn
    from transformers import AutoConfig, AutoModel

    cfg = dict(body_config)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)

    class OutcomeClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = AutoModel.from_config(config)
            self.head = nn.Linear(2 * config.hidden_size, 1)

        def features(self, input_ids, attention_mask):
            h = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            last = h[torch.arange(h.shape[0]), attention_mask.sum(1) - 1]
            return torch.cat([last, (h * m).sum(1) / m.sum(1)], -1)

        def forward(self, input_ids, attention_mask):
            return self.head(self.features(input_ids, attention_mask)).squeeze(-1)

    return OutcomeClassifier()


def pad_batch(seqs: list[list[int]], pad_id: int):
    import torch

    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    return ids, mask


class OutcomeVerifier:
    def __init__(self, model, tokenizer, meta: dict, path: str) -> None:
        self.model, self.tok, self.meta, self.path = model.eval(), tokenizer, meta, path
        self.threshold = float(meta["threshold"])
        self.name = f"{meta['kind']}:{Path(path).resolve().name}"

    def score_messages(self, transcripts: list[list[dict]], batch_size: int = 16) -> list[float]:
        import torch

        seqs = [encode_transcript(self.tok, render_transcript(self.tok, m), self.meta["max_len"], self.meta["head_tokens"])
                for m in transcripts]
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(seqs), batch_size):
                ids, mask = pad_batch(seqs[i : i + batch_size], self.tok.pad_token_id or 0)
                out += torch.sigmoid(self.model(ids, mask)).tolist()
        return out

    def verify(self, steps: list[TranscriptStep], claimed_done: bool, final_state: str = "") -> dict:
        """The API's `verification`: score, which verifier, and flagged = the agent claimed done but the
        verifier scores success below its threshold."""
        score = self.score_messages([transcript_messages(steps, final_state)])[0]
        return {"score": round(score, 4), "model": self.name, "flagged": bool(claimed_done and score < self.threshold)}


def steps_of_episode(ep) -> list[TranscriptStep]:
    """An agent Episode's steps (agent/episode.py StepLog) as transcript steps."""
    return [TranscriptStep(s.messages, s.action, s.raw_output, s.valid, s.feedback, s.claim, bool(s.tools))
            for s in ep.steps]


def save_verifier(path: str | Path, model, tokenizer, meta: dict) -> Path:
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    tokenizer.save_pretrained(str(out / "tokenizer"))
    meta = {**meta, "tokenizer_digest": tokenizer_digest(tokenizer), "transcript_version": TRANSCRIPT_VERSION}
    (out / CHECKPOINT_FILE).write_text(json.dumps(meta, indent=1))
    return out


def load_verifier(path: str | Path, schema_version: int | None = None, tokenizer=None) -> OutcomeVerifier:
    """Load a checkpoint. schema_version: the trajectory record version the caller reads (training and eval
    pass data_collection.schema.SCHEMA_VERSION); tokenizer: one the caller will feed, checked by digest."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    p = Path(path)
    if not (p / CHECKPOINT_FILE).exists():
        raise VerifierCheckpointError(f"{p} is not a verifier checkpoint (no {CHECKPOINT_FILE}); make one with "
                                      "`lam train-verifier --data DIRS --out DIR` and pass DIR/best")
    try:
        meta = json.loads((p / CHECKPOINT_FILE).read_text())
        tok = AutoTokenizer.from_pretrained(str(p / "tokenizer"))
    except Exception as e:
        raise VerifierCheckpointError(f"verifier {p} is damaged: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if meta.get("transcript_version") != TRANSCRIPT_VERSION:
        raise VerifierCheckpointError(f"verifier {p} reads transcript schema v{meta.get('transcript_version')}, this code "
                                      f"writes v{TRANSCRIPT_VERSION}: retrain it with `lam train-verifier`")
    if schema_version is not None and meta.get("schema_version") != schema_version:
        raise VerifierCheckpointError(f"verifier {p} was trained on trajectory schema v{meta.get('schema_version')}, "
                                      f"this data is v{schema_version}: retrain it with `lam train-verifier`")
    digest = tokenizer_digest(tok)
    if digest != meta.get("tokenizer_digest"):
        raise VerifierCheckpointError(f"verifier {p}: its tokenizer/ (digest {digest}) is not the tokenizer it was "
                                      f"trained with ({meta.get('tokenizer_digest')}); retrain it")
    if tokenizer is not None and tokenizer_digest(tokenizer) != digest:
        raise VerifierCheckpointError(f"verifier {p} was trained for another tokenizer (digest {digest}, given "
                                      f"{tokenizer_digest(tokenizer)})")
    model = build_classifier(meta["body_config"])
    try:
        model.load_state_dict(load_file(str(p / "model.safetensors")))
    except Exception as e:
        raise VerifierCheckpointError(f"verifier {p}: model.safetensors does not fit its verifier.json: "
                                      f"{str(e).splitlines()[0]}") from None
    return OutcomeVerifier(model, tok, meta, str(p))
