from agent.prompt import Turn, render_training_chunks
from training.samples import Conversation, Sample, make_batches
from training.tokenizer import ChatEncoder, train_tokenizer

CONVS = [
    render_training_chunks(
        f"go to the {c} ball",
        [Turn(f"facing east, carrying nothing\na {c} ball {k} steps forward", "", "go forward") for k in (3, 2, 1)],
        ["turn left", "go forward"],
        window=8,
    )[0]
    for c in ("red", "green", "blue", "purple")
]


def test_encoder_equals_chat_template_and_masks_all_but_actions():
    tok = train_tokenizer([m["content"] for c in CONVS for m in c], vocab_size=300)
    enc = ChatEncoder(tok)
    for conv in CONVS:
        ids, labels, _ = enc.encode(Conversation(conv, [], [i for i, m in enumerate(conv) if m["role"] == "assistant"]))
        text = tok.apply_chat_template(conv, tokenize=False)
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        supervised = tok.decode([i for i, l in zip(ids, labels) if l != -100])
        assert supervised == "go forward<|end|>" * 3
    # a prompt rendered for generation is exactly the training prefix before an action
    prompt = tok.apply_chat_template(CONVS[0][:2], add_generation_prompt=True, tokenize=False)
    assert tok.apply_chat_template(CONVS[0][:3], tokenize=False).startswith(prompt)


def test_batches_are_deterministic_cover_everything_and_respect_budget():
    samples = [Sample(ids=[1] * n, labels=[1] * n) for n in range(5, 300, 3)]
    a = make_batches(samples, tokens_per_batch=600, seed=1, epoch=2)
    assert a == make_batches(samples, tokens_per_batch=600, seed=1, epoch=2)
    assert a != make_batches(samples, tokens_per_batch=600, seed=1, epoch=3)
    assert sorted(i for b in a for i in b) == list(range(len(samples)))
    for b in a:
        assert len(b) == 1 or max(len(samples[i].ids) for i in b) * len(b) <= 600


def test_spaced_style_spells_a_word_alike_in_the_request_and_the_view():
    texts = [f"go to the {c} {t}\nfacing north, carrying nothing\na {c} {t} {k} step left\na wall 2 steps forward"
             for c in ("red", "green", "blue") for t in ("key", "ball", "box") for k in (1, 2)]
    tok = train_tokenizer(texts, vocab_size=600, style="spaced")
    ids = tok("go to the red key\na red key 1 step left", add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    assert pieces.count(" red") == 2 and pieces.count(" key") == 2, pieces
    assert tok.decode(ids) == "go to the red key\na red key 1 step left"
    phrases = train_tokenizer(texts, vocab_size=600, style="phrases")  # the default: the request is one token
    assert " red" not in [phrases.decode([i]) for i in phrases("go to the red key\n", add_special_tokens=False)["input_ids"]]
