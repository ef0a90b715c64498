"""SFT samples from trajectory rows (StepRow): the conversation each step stored (schema v3: the exact
messages, and tools, the policy was given) plus the step's action as an assistant message, rendered
by the model's own chat template through serving/chat_format.py, the code the server renders
requests with. So the prompt a served model gets for an agent's step t is, token for token, the
prefix of the training sample before step t's action (checked for every sample).

Consecutive steps whose prompts extend each other form one multi-turn sample (BabyAI: one per
history window, as before; a tool episode: the growing conversation with tool calls and results).
The loss covers exactly the tokens of the episode's valid actions: the span between the prompt with
the generation prompt and the prompt with the action (text actions and tool calls alike).

A sample longer than `max_len` is cut after the last action that fits whole; the actions past it
are dropped and counted (`report["actions_dropped_too_long"]`), never cut in the middle.
Batches group samples of similar length under a token budget.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from agent.tool_call_format import format_call_raw
from data_collection.schema import StepRow
from serving.chat_format import parse_tool_calls
from training.tokenizer import TOOLS_HEAD, TOOLS_TAIL, ChatEncoder, SampleError, signature_line  # noqa: F401


@dataclass
class Sample:
    ids: list[int]
    labels: list[int]


@dataclass
class Conversation:
    """One training conversation: OpenAI messages (+ tools), the assistant messages to learn."""

    messages: list[dict]
    tools: list[dict] = field(default_factory=list)
    labeled: list[int] = field(default_factory=list)  # indices of assistant messages with loss
    source: str = ""  # where it starts, for errors: "episode E step S"


def _assistant_message(row: StepRow, nxt: StepRow | None, msgs: list[dict]) -> dict:
    """What the runner appended to the conversation for this step: taken from the next step's stored
    prompt where that extends this one, else rebuilt from the record like agent/conversation.py does."""
    if nxt is not None:
        later = nxt.chat_messages()
        if len(later) > len(msgs) and later[: len(msgs)] == msgs and later[len(msgs)]["role"] == "assistant":
            return later[len(msgs)]
    if not row.tools:
        return {"role": "assistant", "content": row.action}  # text space ("" where grounding failed)
    if not row.valid:
        return {"role": "assistant", "content": row.raw_output}
    content, calls = parse_tool_calls(row.action)
    if not calls:
        return {"role": "assistant", "content": row.action}  # a closing message
    for i, c in enumerate(calls):
        c["id"] = f"call_{row.step}_{i}"
    return {"role": "assistant", "content": content, "tool_calls": calls}


def _check_calls(msg: dict, tools: list[dict], where: str) -> None:
    known = {t["function"]["name"] for t in tools}
    for c in msg.get("tool_calls") or []:
        if c["function"]["name"] not in known:
            raise SampleError(f"{where}: the stored action calls {c['function']['name']!r}, which is not among the "
                              f"{len(known)} tools stored with the step ({', '.join(sorted(known)) or 'none'}); "
                              "the record is inconsistent: re-collect the episode or drop it from the dataset")


def episode_conversations(episodes: list[list[StepRow]]) -> list[Conversation]:
    """Each episode's steps (sorted rows of one episode) as conversations; an assistant message is
    learned where the step's action was valid and not blocked by the safety guard (the environment
    took it); the others stay in the conversation as context, as the agent saw them. In an episode that
    changed hands (a takeover: the model's steps, then the expert's; the row's `policy` says who chose
    each action) only the steps of the policy that finished it are learned: the model's are context."""
    convs: list[Conversation] = []
    for ep in episodes:
        rows = [r for r in ep if r.step >= 0 and r.messages]
        finisher = rows[-1].policy if len({r.policy for r in rows}) > 1 else None
        cur: Conversation | None = None
        for k, r in enumerate(rows):
            msgs, tools = r.chat_messages(), r.chat_tools()
            where = f"episode {r.episode_id} step {r.step}"
            msg = _assistant_message(r, rows[k + 1] if k + 1 < len(rows) else None, msgs)
            # what the environment took, chosen by the policy that finished the episode
            learn = bool(r.valid and r.action and not r.blocked) and finisher in (None, r.policy)
            if learn:
                _check_calls(msg, tools, where)
            if cur is not None and cur.tools == tools and msgs[: len(cur.messages)] == cur.messages:
                cur.messages = msgs + [msg]
            else:
                if cur is not None and cur.labeled:
                    convs.append(cur)
                cur = Conversation(msgs + [msg], tools, [], where)
            if learn:
                cur.labeled.append(len(msgs))
        if cur is not None and cur.labeled:
            convs.append(cur)
    return convs


def tokenizer_texts(convs: list[Conversation]) -> list[str]:
    """What a from-scratch tokenizer learns its merges from: message contents (all a text space has,
    so BabyAI's tokenizer is what it always was), plus tool calls and the tools' system text as the template
    writes them."""
    import json

    texts, seen_tools = [], set()
    for c in convs:
        for m in c.messages:
            if m.get("content"):
                texts.append(m["content"])
            for call in m.get("tool_calls") or []:
                texts.append(format_call_raw(call["function"]["name"], call["function"]["arguments"]))
        key = json.dumps(c.tools, sort_keys=True)
        if c.tools and key not in seen_tools:
            seen_tools.add(key)
            texts += [TOOLS_HEAD + "".join(signature_line(t) for t in c.tools) + TOOLS_TAIL]
    return texts


def _encode_chunk(job: tuple[ChatEncoder, list[Conversation]]) -> list[tuple[list[int], list[int], list[tuple[int, int]]]]:
    encoder, convs = job
    return [encoder.encode(c) for c in convs]


def _encoded(convs: list[Conversation], encoder: ChatEncoder, workers: int):
    """encoder.encode over every conversation; rendering through the chat template costs ~5 ms a message,
    so a large dataset is split over `workers` processes (spawned: the trainer may hold threads and Ray)."""
    if workers <= 1 or len(convs) < 2000:
        return map(encoder.encode, convs)
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    size = -(-len(convs) // (4 * workers))
    jobs = [(encoder, convs[i : i + size]) for i in range(0, len(convs), size)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return [e for chunk in pool.map(_encode_chunk, jobs) for e in chunk]


def build_samples(convs: list[Conversation], encoder: ChatEncoder, max_len: int, report: dict | None = None,
                  workers: int = 1) -> list[Sample]:
    """Token samples; `report` (if given) gets the counts of actions and samples dropped for length."""
    samples, dropped_actions, dropped_samples = [], 0, 0
    for c, (ids, labels, spans) in zip(convs, _encoded(convs, encoder, workers)):
        if len(ids) > max_len:  # cut after the last whole action that fits; never inside one
            fit = [end for _, end in spans if end <= max_len]
            dropped_actions += len(spans) - len(fit)
            if not fit:
                dropped_samples += 1
                continue
            ids, labels = ids[: fit[-1]], labels[: fit[-1]]
        samples.append(Sample(ids, labels))
    if report is not None:
        report.update(actions_dropped_too_long=dropped_actions, samples_dropped_too_long=dropped_samples,
                      actions_trained=sum(len(c.labeled) for c in convs) - dropped_actions)
    return samples


def make_batches(samples: list[Sample], tokens_per_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-bucketed batches of sample indices; order is a pure function of (seed, epoch),
    so a resumed run sees exactly the batches the interrupted one would have."""
    rng = random.Random(seed * 1000003 + epoch)
    order = list(range(len(samples)))
    rng.shuffle(order)
    # sort within large random pools: similar lengths batch together, padding stays small
    pool = 64 * max(1, tokens_per_batch // 256)
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: len(samples[i].ids))
        batch, longest = [], 0
        for i in chunk:
            n = len(samples[i].ids)
            if batch and max(longest, n) * (len(batch) + 1) > tokens_per_batch:
                batches.append(batch)
                batch, longest = [], 0
            batch.append(i)
            longest = max(longest, n)
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    return batches


def collate(samples: list[Sample], idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(samples[i].ids) for i in idx)
    ids = torch.full((len(idx), n), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), n), -100, dtype=torch.long)
    mask = torch.zeros((len(idx), n), dtype=torch.long)
    for row, i in enumerate(idx):
        s = samples[i]
        ids[row, : len(s.ids)] = torch.tensor(s.ids)
        labels[row, : len(s.labels)] = torch.tensor(s.labels)
        mask[row, : len(s.ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
