"""One chat template from training to serving (issue 16 item 2): training samples are rendered from the
stored conversation through the model's own template, and the served prompt for an agent's step t is,
token for token, the training sample's prefix before step t's action; labels cover exactly the actions.
For BabyAI (text), BFCL and the generated tool world (tools), with the project template and with a ChatML model directory that
carries Qwen 2.5's tools template."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy
from cluster.cli import main
from data_collection.schema import StepRow, episode_rows, group_steps
from data_collection.store import TrajectoryStore
from envs.base import Task
from envs.registry import make_env
from serving.embedded import EmbeddedBackend
from serving.openai_server import create_app
from serving.value_marks import read_settings, write_settings
from tests.agent.toy_tools import NotesEnv
from tests.training.chatml_model import PLAIN_TEMPLATE, build_chatml_model, chatml_tokenizer
from training.samples import Conversation, build_samples, episode_conversations, tokenizer_texts
from training.tokenizer import ChatEncoder, SampleError, train_tokenizer


def _records(env, task: Task) -> list[StepRow]:
    ep = run_episode(env, ExpertPolicy(), task, RunnerConfig(max_steps=30))
    assert ep.success
    return episode_rows(ep)


@pytest.fixture(scope="module")
def episodes():
    babyai = [_records(make_env("babyai"), Task("babyai", "BabyAI-GoToLocal-v0", s)) for s in (3, 5)]
    bfcl = [_records(make_env("bfcl"), Task("bfcl", "multi_turn_base", 0, "all"))]
    notes = [_records(NotesEnv(), Task("notes", "notes", 0))]
    toolworld = [_records(make_env("toolworld"), Task("toolworld", "L5", 0))]  # find, then act on what came back
    return {"babyai": babyai, "bfcl": bfcl, "notes": notes, "toolworld": toolworld}


def _texts(episodes) -> list[str]:
    return tokenizer_texts(episode_conversations([e for eps in episodes.values() for e in eps]))


def _save_project_model(root: Path, texts: list[str], style: str = "phrases") -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_tokenizer(texts, vocab_size=600, style=style)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32768,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save_pretrained(root)
    tok.save_pretrained(root)
    return root


@pytest.fixture(scope="module", params=["project", "project-words", "project-words-marks", "chatml"])
def model_dir(request, episodes, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    if request.param.startswith("project"):
        root = _save_project_model(root, _texts(episodes), "words" if "words" in request.param else "phrases")
        write_settings(root, value_marks=request.param.endswith("marks"))  # as training's export does
        return root
    return build_chatml_model(root, _texts(episodes), max_positions=32768)


class Recording:
    """The embedded backend, remembering the prompt ids the server submits."""

    def __init__(self, inner) -> None:
        self.inner, self.prompts = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def submit(self, prompt_ids, *args, **kwargs):
        self.prompts.append(list(prompt_ids))
        return self.inner.submit(prompt_ids, *args, **kwargs)


def _served_prompt(client, backend: Recording, row: StepRow) -> list[int]:
    """What the server feeds the model for this step: the agent's request is the stored conversation."""
    body = {"model": "m", "messages": row.chat_messages(), "max_tokens": 1}
    if row.chat_tools():
        body["tools"] = row.chat_tools()
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return backend.prompts[-1]


# issue 16 item 2
@pytest.mark.parametrize("env", ["babyai", "bfcl", "toolworld"])
def test_served_prompt_is_the_training_prefix_and_labels_are_the_actions(env, episodes, model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    encoder = ChatEncoder(tok, value_marks=read_settings(model_dir).get("value_marks", False))
    backend = Recording(EmbeddedBackend(str(model_dir), num_threads=1, max_new_tokens_limit=4))
    try:
        with TestClient(create_app(backend, "m")) as client:
            for ep in episodes[env]:
                convs = episode_conversations([ep])
                encoded = [encoder.encode(c) for c in convs]
                covered = 0
                for row in ep:
                    msgs = row.chat_messages()
                    # the sample that learns this step: its messages continue the step's prompt
                    k = next(i for i, c in enumerate(convs) if len(msgs) in c.labeled
                             and c.messages[: len(msgs)] == msgs)
                    ids, labels, spans = encoded[k]
                    start, end = spans[convs[k].labeled.index(len(msgs))]
                    assert _served_prompt(client, backend, row) == ids[:start]
                    if encoder.value_marks and env == "toolworld":  # both sides really render the marked view
                        assert "[$1]" in tok.decode(ids[:start])
                    action = tok.decode(ids[start:end])
                    if env == "babyai":
                        assert action.startswith(row.action)
                    else:
                        for call in convs[k].messages[len(msgs)].get("tool_calls") or []:
                            assert call["function"]["name"] in action
                    covered += 1
                assert covered == len(ep)
                for (ids, labels, spans), c in zip(encoded, convs):
                    on = {i for s, e in spans for i in range(s, e)}
                    assert {i for i, l in enumerate(labels) if l != -100} == on  # exactly the actions
                    assert all(labels[i] == ids[i] for i in on) and len(spans) == len(c.labeled)
                    if tok.unk_token_id is not None:
                        assert tok.unk_token_id not in ids
    finally:
        backend.inner.close()


# issue 16 item 2
def test_babyai_samples_are_the_window_chunks_with_the_project_template(episodes):
    """BabyAI's samples keep today's content: one conversation per history window, every action learned."""
    from agent.prompt import Turn, render_training_chunks

    ep = episodes["babyai"][0]
    convs = episode_conversations([ep])
    names = make_env("babyai").action_names()
    turns = [Turn(r.state, r.prev_feedback, r.action) for r in ep]
    assert [c.messages for c in convs] == render_training_chunks(ep[0].request, turns, names, 8)
    tok = train_tokenizer(_texts(episodes), vocab_size=400)
    ids, labels, _ = ChatEncoder(tok).encode(convs[0])
    assert ids == tok(tok.apply_chat_template(convs[0].messages, tokenize=False), add_special_tokens=False)["input_ids"]
    assert tok.decode([t for t in labels if t != -100]) == "".join(f"{r.action}<|end|>" for r in ep[:8])


# issue 16 item 2
def test_a_template_without_tools_refuses_tool_episodes(episodes):
    tok = chatml_tokenizer(_texts(episodes), PLAIN_TEMPLATE)
    convs = episode_conversations(episodes["notes"])
    with pytest.raises(SampleError, match="renders no tools or tool calls"):
        ChatEncoder(tok, name="the tokenizer of M").encode(convs[0])
    # text episodes still train with it
    ids, labels, spans = ChatEncoder(tok).encode(episode_conversations(episodes["babyai"])[0])
    assert spans and tok.unk_token_id not in ids


# issue 16 item 2
def test_a_stored_call_to_an_unknown_function_is_refused(episodes):
    ep = [replace(r) for r in episodes["notes"][0]]
    first = next(r for r in ep if "add_note" in r.action)
    first.action = first.action.replace("add_note", "add_notes")
    for r in ep:  # as if the record had been written that way: later prompts carry the call too
        r.messages = r.messages.replace('"add_note"', '"add_notes"', 1) if r is not first else r.messages
    with pytest.raises(SampleError, match=r"calls 'add_notes', which is not among the 3 tools"):
        episode_conversations([ep])


# issue 16 item 2
def test_an_action_past_the_context_is_dropped_whole_and_counted(episodes):
    tok = train_tokenizer(_texts(episodes), vocab_size=400)
    enc = ChatEncoder(tok)
    ep = [replace(r) for r in episodes["babyai"][0]]
    ep[-1].action = "go forward " * 400  # one enormous assistant turn, the episode's last
    conv = episode_conversations([ep])[-1]
    ids, labels, spans = enc.encode(conv)
    assert len(spans) >= 3 and spans[-1][1] - spans[-1][0] > 400
    report = {}
    samples = build_samples([conv], enc, spans[-1][1] - 1, report)
    assert report["actions_dropped_too_long"] == 1 and report["actions_trained"] == len(spans) - 1
    assert samples[0].ids == ids[: spans[-2][1]]  # ends right after the last whole action
    report = {}
    assert build_samples([conv], enc, spans[0][1] - 1, report) == [] and report["samples_dropped_too_long"] == 1


def _write(root: Path, episodes: list[list[StepRow]]) -> Path:
    store = TrajectoryStore(root)
    store.write_shard("train", "shard-0", [r for ep in episodes for r in ep])
    return root


# issue 16 item 2
def test_training_refuses_a_dataset_mixing_schema_versions(episodes, tmp_path, capsys):
    good = _write(tmp_path / "v3", episodes["babyai"])
    old = _write(tmp_path / "old", episodes["babyai"])
    m = json.loads((old / "manifest.json").read_text())
    m["schema_version"] = 2
    (old / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert main(["train", "--data", f"{good},{old}", "--out", str(tmp_path / "t")]) != 0
    err = capsys.readouterr().err
    assert "schema version 2" in err and f"lam data upgrade {old}" in err and "Traceback" not in err


# issue 16 item 2
def test_fine_tuning_a_chatml_model_through_deepspeed(episodes, tmp_path):
    """A Hugging Face model whose tokenizer has none of the project's tokens trains on BabyAI and tool
    episodes together: no <unk> anywhere, labels exactly on the assistant spans, a working export."""
    from transformers import AutoTokenizer

    from training.train import TrainConfig, train

    model = build_chatml_model(tmp_path / "chatml", _texts(episodes), max_positions=2048)
    data = _write(tmp_path / "data", episodes["babyai"] + episodes["notes"])
    tok = AutoTokenizer.from_pretrained(model)
    assert tok.unk_token_id == 0 and tok.convert_tokens_to_ids("<|user|>") == 0  # the old trainer's lookups
    convs = episode_conversations(group_steps(TrajectoryStore(data).read_rows("train")))
    assert {bool(c.tools) for c in convs} == {True, False}
    for c in convs:
        ids, labels, spans = ChatEncoder(tok).encode(c)
        assert 0 not in ids
        assert {i for i, l in enumerate(labels) if l != -100} == {i for s, e in spans for i in range(s, e)}
        for s, e in spans:  # every span is one assistant message and its end marker, nothing else
            assert tok.decode(ids[s:e]).endswith("<|im_end|>\n") and "<|im_start|>" not in tok.decode(ids[s:e])
    cfg = TrainConfig(model=str(model), epochs=1.0, tokens_per_batch=2048, max_seq_len=2048, warmup_steps=1,
                      checkpoint_every=0, eval_fraction=0.2, threads=1)
    summary = train(str(data), str(tmp_path / "out"), cfg, progress=False)
    assert summary["steps"] >= 1 and summary["actions_dropped_too_long"] == 0
    assert summary["actions_trained"] == sum(len(c.labeled) for c in convs)
    export = AutoTokenizer.from_pretrained(tmp_path / "out" / "export")
    assert export.chat_template == tok.chat_template  # served with the template it was trained with


# issue 16 item 2
def test_a_conversation_without_labels_makes_no_sample(episodes):
    tok = train_tokenizer(_texts(episodes), vocab_size=400)
    conv = Conversation([{"role": "user", "content": "x"}, {"role": "assistant", "content": "turn left"}], [], [])
    assert ChatEncoder(tok).encode(conv)[2] == []


def _calls_copy_their_values(tok, episode) -> tuple[int, int]:
    """(string arguments of the episode's tool calls, those whose tokens in the call also occur,
    in order and contiguous, in the prompt before the call): a value the model can copy token for token."""
    conv = episode_conversations([episode])[0]
    ids, _, spans = ChatEncoder(tok).encode(conv)
    total = copyable = 0
    for (start, end), a in zip(spans, conv.labeled):
        seen = " ".join(m["content"] or "" for m in conv.messages[:a] if m["role"] in ("user", "tool"))
        for call in conv.messages[a].get("tool_calls") or []:
            for value in json.loads(call["function"]["arguments"]).values():
                if not isinstance(value, str) or value not in seen:  # a constant ("Buy"), not a copy
                    continue
                total += 1
                call_ids = ids[start:end]
                # the value's ids inside the call: the shortest window of the call that decodes to it
                found = [call_ids[i:j] for i in range(len(call_ids)) for j in range(i + 1, len(call_ids) + 1)
                         if tok.decode(call_ids[i:j]) == value]
                prompt = ids[:start]
                if found and any(prompt[k:k + len(found[0])] == found[0] for k in range(len(prompt))):
                    copyable += 1
    return total, copyable


# issue 16 item 4
def test_the_words_tokenizer_spells_a_value_the_same_in_the_request_the_result_and_the_call(episodes):
    """Why tool data gets the "words" style: a name in the request ("... to Mae."), in a result
    ({"user_id": "USR357"}) and in the call ({"user": "Mae"}) must be the same tokens, or copying it is a
    different token sequence for each neighbour; with the "phrases" style most values are not."""
    env = make_env("toolworld")
    train = [_records(env, Task("toolworld", f"L{1 + s % 5}", s)) for s in range(40)]
    texts = tokenizer_texts(episode_conversations(train))
    words, phrases = train_tokenizer(texts, vocab_size=1024, style="words"), train_tokenizer(texts, vocab_size=1024)
    test = [_records(env, Task("toolworld", lvl, s, "test")) for lvl in ("L3", "L4", "L5") for s in range(4)]
    n, ok = map(sum, zip(*(_calls_copy_their_values(words, ep) for ep in test)))
    assert n >= 15 and ok == n
    n2, ok2 = map(sum, zip(*(_calls_copy_their_values(phrases, ep) for ep in test)))
    assert n2 == n and ok2 < n * 0.8, (ok2, n)
    with pytest.raises(ValueError, match="unknown tokenizer style 'chars'"):
        train_tokenizer(texts, vocab_size=600, style="chars")


# issue 16 item 2
def test_a_template_that_is_not_prefix_stable_is_refused_even_when_not_spot_checked(episodes):
    """Spans come from one tokenization of the whole conversation; every conversation, spot-checked or not,
    is refused when a step's prompt is not the start of the conversation that continues it."""
    tok = train_tokenizer(_texts(episodes), vocab_size=400)
    convs = episode_conversations(episodes["babyai"])
    enc = ChatEncoder(tok, verify_every=1000)
    enc.encode(convs[0])  # the spot-checked one: fine with the project template
    tok.chat_template = tok.chat_template.replace("{% if add_generation_prompt %}<|assistant|>",
                                                  "{% if add_generation_prompt %}<|assistant|> ")
    with pytest.raises(SampleError, match="not prefix-stable at message"):
        enc.encode(convs[1])  # not spot-checked: the offsets check alone refuses it
