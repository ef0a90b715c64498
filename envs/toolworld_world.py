"""The tool world's generated initial states and the split-disjoint pools they draw from.

Splits are disjoint on every generated name and value: a value belongs to the test split when
it is 0 mod 3 (integers, prices in cents; text by its crc32: `split_of`), and each split draws only
its own (file stems, folders, contacts, user ids, symbols, prices, amounts, texts, titles). A
`World` records every value it drew (`values`), so a test can check that no test value is ever in a
train task. Tasks (requests, plans, levels) are built on top of it in envs/toolworld_tasks.py.
"""
from __future__ import annotations

import random
import zlib
from typing import Callable

FILES, MESSAGES, TRADING, TICKETS = "GorillaFileSystem", "MessageAPI", "TradingBot", "TicketAPI"
APIS = (FILES, MESSAGES, TRADING, TICKETS)
ROOT = "workspace"
BALANCE = 100000.0  # enough for any generated order


def split_of(value) -> str:
    """Every third value is a test value: integers and cents by their number, text by its crc32."""
    if isinstance(value, float):
        value = round(value * 100)
    key = value if isinstance(value, int) else zlib.crc32(str(value).encode())
    return "test" if key % 3 == 0 else "train"


_WORDS = ("budget notes draft report invoice summary agenda minutes roadmap backlog memo ledger payroll "
          "contract receipt schedule survey forecast proposal checklist manual outline review plan audit "
          "script dataset config template poster slides journal diary recipe letter resume thesis essay "
          "chart diagram sketch photo banner logo index catalog inventory timeline").split()
_FOLDERS = ("archive photos reports music videos backup drafts projects clients finance travel school "
            "recipes games books papers scans exports imports shared private old new misc assets media "
            "logs temp research designs invoices contracts letters work home labs vault stash "
            "inbox outbox family garden sports").split()
# A file is found by a word of its name: no word may hide inside another name.
_FOLDERS = tuple(f for f in _FOLDERS if not any(w in f for w in _WORDS))
assert not [(a, b) for a in _WORDS for b in _WORDS if a != b and a in b]
_NAMES = ("Aaron Abby Adam Alan Alice Amber Amir Anna Arjun Ava Ben Bella Boris Carl Chen Chloe Clara "
          "Dan Dana Diego Dora Eli Ella Emil Erin Eva Fay Felix Finn Gia Gus Hana Hugo Ian Ida Ines Ivan "
          "Jack Jade Jon Juno Kai Kara Ken Kira Lars Lea Leo Lina Liam Lola Luca Mae Maya Max Mia Milo "
          "Nadia Nate Nia Noah Nora Olga Omar Otto Paul Pia Quinn Raj Rita Rosa Ruth Sam Sara Seth Sofia "
          "Tara Theo Tom Uma Vera Vik Wade Yara Yuki Zoe").split()
_OPENERS = ("see you at the|thanks for the|call me about the|ready for the|remember the|running late for the|"
            "please review the|good news about the|question about the|notes from the").split("|")
_TOPICS = ("meeting demo launch review lunch trip workshop party game concert deadline interview call "
           "budget offsite retro kickoff picnic match class").split()
_THINGS = ("printer laptop monitor router badge login keyboard projector phone account license server "
           "mailbox calendar vpn camera headset").split()
_PROBLEMS = "broken slow missing locked noisy flickering frozen dead".split()
_CONSONANTS, _VOWELS = "BCDFGKLMNPRSTVXZ", "AEIOU"


def _pool(values, split: str) -> list:
    return [v for v in values if split_of(v) == split]


_STATIC = {s: {"words": _pool(_WORDS, s), "folders": _pool(_FOLDERS, s), "names": _pool(_NAMES, s),
               "texts": _pool([f"{o} {t}" for o in _OPENERS for t in _TOPICS], s),
               "titles": _pool([f"{p} {t}" for p in _PROBLEMS for t in _THINGS], s),
               "symbols": _pool([a + b + c + d for a in _CONSONANTS for b in _VOWELS for c in _CONSONANTS
                                 for d in "XYZQ"], s),
               "shares": _pool(range(1, 41), s), "priorities": _pool(range(1, 6), s)}
           for s in ("train", "test")}
assert all(all(v for v in pools.values()) for pools in _STATIC.values()), "every split needs every pool"


class World:
    """One task's generated initial state; parts draw fresh names from it and register what they need."""

    def __init__(self, rng: random.Random, split: str) -> None:
        self.rng, self.split, self.pools = rng, split, _STATIC[split]
        self.values: set[str] = set()  # every generated name and value (the split-disjointness check)
        self.used: set[str] = set()
        self.me = self.draw("names")
        self.files: dict[str, str] = {}  # root file -> content
        self.folders: dict[str, dict[str, str]] = {}  # folder -> {file: content}
        self.contacts: dict[str, str] = {self.me: self._user_id()}
        self.inbox: list[dict] = []
        self.stocks: dict[str, float] = {}
        self.watch: list[str] = []
        for _ in range(rng.randint(1, 2)):
            self.folder()
        for _ in range(rng.randint(1, 3)):
            self.file()
        for _ in range(rng.randint(2, 3)):
            self.contact()
        for _ in range(rng.randint(2, 3)):
            self.stock()
        self.watch.append(self.stock())
        self.inbox.append({self.contact(): self.draw("texts")})

    # -- drawing names and values from the split's pools ---------------------------------------
    def draw(self, pool: str, unique: bool = True):
        options = self.pools[pool]
        value = self.rng.choice(options)
        while unique and str(value) in self.used:  # a world uses a few dozen values; pools are larger
            value = self.rng.choice(options)
        self.values.add(str(value))
        if unique:
            self.used.add(str(value))
        return value

    def number(self, lo: int, hi: int, fmt: Callable[[int], object], unique: bool = True) -> object:
        while True:
            value = fmt(self.rng.randint(lo, hi))
            if split_of(value) == self.split and not (unique and str(value) in self.used):
                self.values.add(str(value))
                if unique:
                    self.used.add(str(value))
                return value

    def _user_id(self) -> str:
        return self.number(100, 999, lambda n: f"USR{n}")

    def _price(self) -> float:
        return self.number(1000, 9999, lambda n: round((n * 10 + 1 + n % 9) / 100, 2))

    def file_name(self) -> str:
        stem, suffix = self.draw("words"), self.number(10, 99, int)
        name = f"{stem}_{suffix}.{self.rng.choice(['txt', 'md', 'csv', 'log'])}"
        self.values.add(name)
        return name

    # -- pieces of the initial state ---------------------------------------------------------
    def file(self) -> str:
        """A file in the root folder, where every task works."""
        name = self.file_name()
        self.files[name] = self.content()
        return name

    def content(self) -> str:
        return f"{self.draw('texts', unique=False)} {self.number(10, 99, int, unique=False)}"

    def folder(self) -> str:
        name = self.draw("folders")
        self.folders[name] = {}
        if self.rng.random() < 0.7:
            self.folders[name][self.file_name()] = self.content()
        return name

    def contact(self) -> str:
        name = self.draw("names")
        self.contacts[name] = self._user_id()
        return name

    def stock(self) -> str:
        symbol = self.draw("symbols")
        self.stocks[symbol] = self._price()
        return symbol

    def configs(self) -> dict[str, dict]:
        """The backends' `_load_scenario` inputs."""
        tree = {**{f: {"type": "file", "content": c} for f, c in self.files.items()},
                **{d: {"type": "directory", "contents": {f: {"type": "file", "content": c} for f, c in fs.items()}}
                   for d, fs in self.folders.items()}}
        return {
            FILES: {"root": {ROOT: {"type": "directory", "contents": tree}}},
            MESSAGES: {"user_count": len(self.contacts), "user_map": dict(self.contacts), "inbox": list(self.inbox),
                       "message_count": len(self.inbox), "current_user": self.contacts[self.me],
                       "generated_ids": set()},
            TRADING: {"orders": {}, "account_info": {"account_id": 1, "balance": BALANCE, "binding_card": 1},
                      "authenticated": True, "market_status": "Open", "order_counter": 1000,
                      "stocks": {s: {"price": p} for s, p in self.stocks.items()}, "watch_list": list(self.watch),
                      "transaction_history": []},
            TICKETS: {"ticket_queue": [], "ticket_counter": 1, "current_user": self.me},
        }
