"""Tool-world tasks: generated worlds, templated requests and the gold plans that solve them.

    python bench/toolworld_levels.py          # the expert and random per level (envs/TOOLWORLD_LEVELS.md)

A task is (level, split, seed) -> `Generated`: the initial configuration of four BFCL backends
(GorillaFileSystem, MessageAPI, TradingBot, TicketAPI), a request built from paraphrase templates,
and its parts. Each part is one kind of job ("delete a file", "buy at the current price") with a
plan: a generator that yields `Action`s and receives each call's result, so a plan reads the world
(find, get_user_id, get_stock_info) before it acts. The environment runs the plans on a copy of the
initial state to get the goal state; the expert runs the same plans live.

Splits are disjoint on every generated name and value (envs/toolworld_world.py). Compositions of
kinds (levels 2, 4 and 5) whose crc32 is 0 mod 4 are held out: train never draws them, test does;
so are some pairings of a connector template ("Then", "After that,", ...) with the backends it joins.
"""
from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass, field
from typing import Callable, Generator

from envs.base import Action
from envs.toolworld_world import APIS, FILES, MESSAGES, TICKETS, TRADING, World

Plan = Generator[Action, object, object]  # yields calls, receives results, returns the answer (or None)


def held_out(kinds: tuple[str, ...]) -> bool:
    return zlib.crc32("+".join(kinds).encode()) % 4 == 0


@dataclass
class Part:
    kind: str
    text: str  # one or more sentences of the request
    plan: Callable[[], Plan]
    writes: frozenset[str]  # backends whose state the part changes
    uses: frozenset[str]  # backends whose tools the part needs


def _part(kind, text, plan, writes=(), uses=()) -> Part:
    return Part(kind, text, plan, frozenset(writes), frozenset(set(uses) | set(writes)))


def _one(action: Action) -> Callable[[], Plan]:
    def plan():
        yield action
    return plan


def _say(w: World, templates: list[str], **slots) -> str:
    return w.rng.choice(templates).format(**slots)


# -- kinds: one call (level 1) ------------------------------------------------------------------
def k_mkdir(w: World) -> Part:
    d = w.draw("folders")
    text = _say(w, ["Create a folder named {d}.", "Make a new directory called {d}.", "Please add a folder {d}."], d=d)
    return _part("mkdir", text, _one(Action("mkdir", {"dir_name": d})), [FILES])


def k_touch(w: World) -> Part:
    f = w.file_name()
    text = _say(w, ["Create an empty file named {f}.", "Make a new file called {f}.", "Please add a file {f}."], f=f)
    return _part("touch", text, _one(Action("touch", {"file_name": f})), [FILES])


def k_rm(w: World) -> Part:
    f = w.file()
    text = _say(w, ["Delete the file {f}.", "Remove {f}.", "Please get rid of the file {f}."], f=f)
    return _part("rm", text, _one(Action("rm", {"file_name": f})), [FILES])


def k_mv(w: World) -> Part:
    f, d = w.file(), w.folder()
    text = _say(w, ["Move {f} into the folder {d}.", "Put the file {f} in {d}.", "Please move {f} to {d}."], f=f, d=d)
    return _part("mv", text, _one(Action("mv", {"source": f, "destination": d})), [FILES])


def k_send_id(w: World) -> Part:
    uid, msg = w.contacts[w.contact()], w.draw("texts")
    text = _say(w, ["Send the message '{m}' to user {u}.", "Message user {u}: '{m}'.", "Tell user {u} '{m}'."], m=msg, u=uid)
    return _part("send_id", text, _one(Action("send_message", {"receiver_id": uid, "message": msg})), [MESSAGES])


def k_add_contact(w: World) -> Part:
    name = w.draw("names")
    text = _say(w, ["Add {n} to my contacts.", "Save {n} as a new contact.", "Please add the contact {n}."], n=name)
    return _part("add_contact", text, _one(Action("add_contact", {"user_name": name})), [MESSAGES])


def k_watch_add(w: World) -> Part:
    s = w.stock()
    text = _say(w, ["Add {s} to my watchlist.", "Watch the stock {s}.", "Please put {s} on my watchlist."], s=s)
    return _part("watch_add", text, _one(Action("add_to_watchlist", {"stock": s})), [TRADING])


def k_watch_rm(w: World) -> Part:
    s = w.stock()
    w.watch.append(s)
    text = _say(w, ["Remove {s} from my watchlist.", "Stop watching {s}.", "Please take {s} off my watchlist."], s=s)
    return _part("watch_rm", text, _one(Action("remove_stock_from_watchlist", {"symbol": s})), [TRADING])


def _order(s: str, price, n: int) -> Action:
    return Action("place_order", {"order_type": "Buy", "symbol": s, "price": price, "amount": n})


def k_buy(w: World) -> Part:
    s, n, p = w.stock(), w.draw("shares"), w._price()
    text = _say(w, ["Buy {n} shares of {s} at {p}.", "Place a buy order for {n} {s} shares at {p} each.",
                    "Please buy {n} shares of {s} for {p} per share."], n=n, s=s, p=p)
    return _part("buy", text, _one(_order(s, p, n)), [TRADING])


def k_ticket(w: World) -> Part:
    title, prio = w.draw("titles"), w.draw("priorities", unique=False)
    text = _say(w, ["Open a ticket titled '{t}' with priority {p}.", "Create a support ticket '{t}', priority {p}.",
                    "File a ticket called '{t}' at priority {p}."], t=title, p=prio)
    return _part("ticket", text, _one(Action("create_ticket", {"title": title, "priority": prio})), [TICKETS])


# -- kinds: a lookup whose result feeds the next call (level 3) ----------------------------------
def _find(w: World) -> tuple[str, str]:
    """A root file reachable only by a word of its name (the word is in no other name)."""
    f = w.file()
    return f, f.split("_")[0]


def _found(result) -> str:
    return str(result["matches"][0]).removeprefix("./")


def k_find_rm(w: World) -> Part:
    f, word = _find(w)
    text = _say(w, ["Find the file with '{q}' in its name and delete it.", "Delete the file whose name contains '{q}'.",
                    "Look for the '{q}' file and remove it."], q=word)

    def plan():
        found = yield Action("find", {"name": word})
        yield Action("rm", {"file_name": _found(found)})
    return _part("find_rm", text, plan, [FILES])


def k_find_mv(w: World) -> Part:
    f, word = _find(w)
    d = w.folder()
    text = _say(w, ["Find the file with '{q}' in its name and move it into {d}.", "Move the file whose name contains "
                    "'{q}' to the folder {d}.", "Look for the '{q}' file and put it in {d}."], q=word, d=d)

    def plan():
        found = yield Action("find", {"name": word})
        yield Action("mv", {"source": _found(found), "destination": d})
    return _part("find_mv", text, plan, [FILES])


def k_send_name(w: World) -> Part:
    name, msg = w.contact(), w.draw("texts")
    text = _say(w, ["Send the message '{m}' to {n}.", "Message {n}: '{m}'.", "Tell {n} '{m}'."], m=msg, n=name)

    def plan():
        found = yield Action("get_user_id", {"user": name})
        yield Action("send_message", {"receiver_id": found["user_id"], "message": msg})
    return _part("send_name", text, plan, [MESSAGES])


def k_buy_market(w: World) -> Part:
    s, n = w.stock(), w.draw("shares")
    text = _say(w, ["Buy {n} shares of {s} at the current price.", "Place a buy order for {n} {s} shares at the "
                    "market price.", "Please buy {n} shares of {s} at whatever it costs now."], n=n, s=s)

    def plan():
        info = yield Action("get_stock_info", {"symbol": s})
        yield _order(s, info["price"], n)
    return _part("buy_market", text, plan, [TRADING])


# -- kinds: chains across two backends (level 4) ---------------------------------------------------
def k_cat_send(w: World) -> Part:
    f, name = w.file(), w.contact()
    text = _say(w, ["Send the content of the file {f} to {n}.", "Read {f} and message its text to {n}.",
                    "Forward what {f} says to {n}."], f=f, n=name)

    def plan():
        read = yield Action("cat", {"file_name": f})
        found = yield Action("get_user_id", {"user": name})
        yield Action("send_message", {"receiver_id": found["user_id"], "message": read["file_content"]})
    return _part("cat_send", text, plan, [MESSAGES], [FILES])


def k_price_send(w: World) -> Part:
    s, name = w.stock(), w.contact()
    text = _say(w, ["Look up the price of {s} and send it to {n}.", "Tell {n} the current price of {s}.",
                    "Message {n} what {s} costs now."], s=s, n=name)

    def plan():
        info = yield Action("get_stock_info", {"symbol": s})
        found = yield Action("get_user_id", {"user": name})
        yield Action("send_message", {"receiver_id": found["user_id"], "message": str(info["price"])})
    return _part("price_send", text, plan, [MESSAGES], [TRADING])


# -- kinds: questions, answered in the final reply (level 5) ----------------------------------------
def k_price_q(w: World) -> Part:
    s = w.stock()
    text = _say(w, ["What is the current price of {s}?", "Tell me the price of {s}.", "How much does {s} cost?"], s=s)

    def plan():
        info = yield Action("get_stock_info", {"symbol": s})
        return str(info["price"])
    return _part("price_q", text, plan, (), [TRADING])


def k_user_q(w: World) -> Part:
    name = w.contact()
    text = _say(w, ["What is the user ID of {n}?", "Tell me {n}'s user ID.", "Which user ID does {n} have?"], n=name)

    def plan():
        found = yield Action("get_user_id", {"user": name})
        return found["user_id"]
    return _part("user_q", text, plan, (), [MESSAGES])


def k_cat_q(w: World) -> Part:
    f = w.file()
    text = _say(w, ["What does the file {f} say?", "Tell me the content of {f}.", "What is written in {f}?"], f=f)

    def plan():
        read = yield Action("cat", {"file_name": f})
        return read["file_content"]
    return _part("cat_q", text, plan, (), [FILES])


def k_find_q(w: World) -> Part:
    f, word = _find(w)
    text = _say(w, ["What does the file with '{q}' in its name say?", "Find the '{q}' file and tell me its content."],
                q=word)

    def plan():
        found = yield Action("find", {"name": word})
        read = yield Action("cat", {"file_name": _found(found)})
        return read["file_content"]
    return _part("find_q", text, plan, (), [FILES])


SINGLE = {"mkdir": k_mkdir, "touch": k_touch, "rm": k_rm, "mv": k_mv, "send_id": k_send_id,
          "add_contact": k_add_contact, "watch_add": k_watch_add, "watch_rm": k_watch_rm, "buy": k_buy, "ticket": k_ticket}
LOOKUP = {"find_rm": k_find_rm, "find_mv": k_find_mv, "send_name": k_send_name, "buy_market": k_buy_market}
CHAIN = {"cat_send": k_cat_send, "price_send": k_price_send}
QUESTION = {"price_q": k_price_q, "user_q": k_user_q, "cat_q": k_cat_q, "find_q": k_find_q}
KINDS = {**SINGLE, **LOOKUP, **CHAIN, **QUESTION}
WRITES = {"mkdir": FILES, "touch": FILES, "rm": FILES, "mv": FILES, "find_rm": FILES, "find_mv": FILES,
          "send_id": MESSAGES, "add_contact": MESSAGES, "send_name": MESSAGES, "cat_send": MESSAGES,
          "price_send": MESSAGES, "watch_add": TRADING, "watch_rm": TRADING, "buy": TRADING, "buy_market": TRADING,
          "ticket": TICKETS}

# Level -> the slots of its compositions: each slot is a set of kinds, one drawn per slot.
LEVELS = {
    "L1": [[SINGLE]],  # one call
    "L2": [[SINGLE, SINGLE]],  # two independent calls
    "L3": [[LOOKUP]],  # a lookup feeding the next call
    "L4": [[CHAIN], [LOOKUP, SINGLE], [LOOKUP, LOOKUP]],  # 3-4 calls across two backends
    "L5": [[CHAIN, SINGLE, QUESTION], [LOOKUP, LOOKUP, QUESTION], [LOOKUP, SINGLE, QUESTION]],  # 4-6 calls + answer
}
_JOIN = [" ", " Then ", " After that, ", " Also, "]


@dataclass
class Generated:
    level: str
    split: str
    seed: int
    request: str
    kinds: tuple[str, ...]
    parts: list[Part]
    configs: dict[str, dict]
    values: set[str] = field(default_factory=set)
    glues: list[str] = field(default_factory=list)  # the connector before each part after the first

    def key(self) -> str:
        """What makes two tasks the same: the request and the initial state."""
        return self.request + json.dumps(self.configs, sort_keys=True, default=sorted)

    @property
    def apis(self) -> list[str]:
        """The backends whose tools the agent is offered, in a fixed order."""
        used = set().union(*(p.uses for p in self.parts))
        return [a for a in APIS if a in used]


def _kinds(rng: random.Random, level: str, split: str) -> tuple[str, ...]:
    while True:
        slots = rng.choice(LEVELS[level])
        kinds = tuple(rng.choice(sorted(s)) for s in slots)
        writes = [WRITES[k] for k in kinds if k in WRITES]
        if len(set(writes)) < len(writes) or len(set(kinds)) < len(kinds):
            continue  # parts change different backends: their order between backends cannot matter
        if len(kinds) > 1 and split == "train" and held_out(kinds):
            continue
        return kinds


def junctions(parts: list[Part], glues: list[str]) -> list[tuple[str, str, str]]:
    """(glue, backends before, backends after) per joint of a composed request."""
    apis = ["+".join(sorted(p.uses)) for p in parts]
    return [(g, a, b) for g, a, b in zip(glues, apis, apis[1:])]


def glue_held_out(junction: tuple[str, str, str]) -> bool:
    """Connector templates x backend pairs held out for test: e.g. "After that," never links a
    file job to a trading job in train. Two sentences side by side (glue " ") are never held out."""
    return junction[0] != " " and zlib.crc32("|".join(junction).encode()) % 4 == 0


def _join(rng: random.Random, parts: list[Part], split: str) -> tuple[str, list[str]]:
    out, glues = parts[0].text, []
    for before, part in zip(parts, parts[1:]):
        options = [g for g in _JOIN if split == "test" or not glue_held_out(junctions([before, part], [g])[0])]
        glue = rng.choice(options)
        glues.append(glue)
        out += glue + (part.text if glue == " " else part.text[0].lower() + part.text[1:])
    return out, glues


def generate(level: str, split: str, seed: int) -> Generated:
    if level not in LEVELS:
        raise ValueError(f"unknown toolworld level {level!r}; known: {', '.join(LEVELS)}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
    rng = random.Random(f"toolworld/{level}/{split}/{seed}")
    kinds = _kinds(rng, level, split)
    world = World(rng, split)
    parts = [KINDS[k](world) for k in kinds]
    request, glues = _join(rng, parts, split)
    return Generated(level, split, seed, request, kinds, parts, world.configs(), world.values, glues)


def gold_plan(parts: list[Part]) -> Plan:
    """All parts' plans in order; returns the answers the questions asked for."""
    answers = []
    for part in parts:
        answer = yield from part.plan()
        if part.kind in QUESTION:
            answers.append(str(answer))
    return answers
