"""Mission variants of BabyAI levels (data evolving, LAM step 1b), verified by minigrid itself.

    LAM-GoToLocal-Paraphrase-v0   "walk over to the red ball"           (same task, new wording)
    LAM-GoToLocal-Then-v0         "go to the red ball, then pick up the blue key"   (BeforeInstr)
    LAM-GoToLocal-After-v0        "pick up the blue key after you go to the red ball" (AfterInstr)
    LAM-GoToLocal-And-v0          "go to the red ball and pick up the blue key"      (AndInstr)

Each variant is a gymnasium-registered subclass of its base level: the base level generates the
room and its instruction exactly as it would for the same seed, then the variant rewrites the
mission text (paraphrase) or wraps the instruction with a second one about another object in the
world (composition). minigrid's own verifier checks the result, and `gym.make(variant)` replays it.
The origin is kept on the env as `lam_base_level` / `lam_base_request`.

Choices come from the env's seeded RNG, so (variant, seed) always gives the same task.
"""
from __future__ import annotations

import gymnasium as gym
from minigrid.envs.babyai.core.roomgrid_level import RejectSampling
from minigrid.envs.babyai.core.verifier import (
    ActionInstr,
    AfterInstr,
    AndInstr,
    BeforeInstr,
    GoToInstr,
    ObjDesc,
    OpenInstr,
    PickupInstr,
    PutNextInstr,
)

COMPOSE_KINDS = ("then", "after", "and")
VARIANT_KINDS = ("paraphrase", *COMPOSE_KINDS)
# Levels whose instruction is always one action clause, so a second one can be added around it.
COMPOSE_BASES = (
    "BabyAI-GoToLocal-v0",
    "BabyAI-PickupLoc-v0",
    "BabyAI-PutNextLocal-v0",
    "BabyAI-GoTo-v0",
    "BabyAI-Pickup-v0",
    "BabyAI-Open-v0",
)

# Templates per clause; {d} is minigrid's own object phrase ("the red ball", "a blue key"). The first
# of each is minigrid's own wording: clauses use the others, so a paraphrase always reads differently.
_GOTO = ("go to {d}", "walk over to {d}", "head to {d}", "make your way to {d}", "move next to {d}")
_PICKUP = ("pick up {d}", "grab {d}", "take {d}", "get {d} and hold it", "lift {d}")
_OPEN = ("open {d}", "get {d} open", "make {d} open", "swing {d} open")
_PUTNEXT = ("put {m} next to {f}", "place {m} beside {f}", "move {m} so it is next to {f}", "bring {m} to {f}")
_BEFORE = ("{a}, then {b}", "first {a}, then {b}", "{a} and after that {b}", "{a}; once done, {b}")
_AFTER = ("{a} after you {b}", "first {b}, then {a}", "once you {b}, {a}")
_AND = ("{a} and {b}", "{a}, and also {b}", "both {a} and {b}")


def variant_name(base: str, kind: str) -> str:
    """BabyAI-GoToLocal-v0 + then -> LAM-GoToLocal-Then-v0"""
    return f"LAM-{base.removeprefix('BabyAI-').removesuffix('-v0')}-{kind.capitalize()}-v0"


def paraphrase(instr, env) -> str:
    """A template rewording of `instr` (any BabyAI instruction tree), drawn with the env's RNG."""
    pick = lambda options: options[env._rand_int(0, len(options))]  # noqa: E731
    if isinstance(instr, GoToInstr):
        return pick(_GOTO[1:]).format(d=instr.desc.surface(env))
    if isinstance(instr, PickupInstr):
        return pick(_PICKUP[1:]).format(d=instr.desc.surface(env))
    if isinstance(instr, OpenInstr):
        return pick(_OPEN[1:]).format(d=instr.desc.surface(env))
    if isinstance(instr, PutNextInstr):
        return pick(_PUTNEXT[1:]).format(m=instr.desc_move.surface(env), f=instr.desc_fixed.surface(env))
    templates = {BeforeInstr: _BEFORE, AfterInstr: _AFTER, AndInstr: _AND}.get(type(instr))
    if templates is None:
        return instr.surface(env)
    return pick(templates).format(a=paraphrase(instr.instr_a, env), b=paraphrase(instr.instr_b, env))


def _described(instr) -> list[ObjDesc]:
    return [getattr(instr, k) for k in ("desc", "desc_move", "desc_fixed") if hasattr(instr, k)]


def second_clause(env, first) -> ActionInstr:
    """An action clause about an object the first clause does not mention (rejects if none)."""
    taken = {(d.type, d.color) for d in _described(first)}
    objs = [
        o for o in env.grid.grid
        if o is not None and o.type in ("ball", "box", "key", "door") and (o.type, o.color) not in taken
    ]
    if not objs:
        raise RejectSampling("no second object to compose an instruction with")
    obj = env._rand_elem(objs)
    desc = ObjDesc(obj.type, obj.color)
    if obj.type == "door":
        return OpenInstr(desc) if env._rand_bool() and not obj.is_locked else GoToInstr(desc)
    return PickupInstr(desc) if env._rand_bool() else GoToInstr(desc)


def make_variant_class(base_cls: type, base_level: str, kind: str) -> type:
    if kind not in VARIANT_KINDS:
        raise ValueError(f"unknown variant {kind!r}; known: {', '.join(VARIANT_KINDS)}")

    class Variant(base_cls):
        lam_base_level = base_level
        lam_variant = kind

        def gen_mission(self):
            super().gen_mission()
            self.lam_base_instrs = self.instrs
            if kind in COMPOSE_KINDS:
                if not isinstance(self.instrs, ActionInstr):
                    raise RejectSampling("composition needs a single-clause base instruction")
                extra = second_clause(self, self.instrs)
                self.instrs = {
                    "then": lambda: BeforeInstr(self.instrs, extra),
                    "after": lambda: AfterInstr(extra, self.instrs),  # the base clause still comes first
                    "and": lambda: AndInstr(self.instrs, extra),
                }[kind]()

        def _gen_grid(self, width, height):
            super()._gen_grid(width, height)
            self.lam_base_request = self.lam_base_instrs.surface(self)
            if kind == "paraphrase":
                self.surface = self.mission = paraphrase(self.instrs, self)

    Variant.__name__ = Variant.__qualname__ = f"{base_cls.__name__}{kind.capitalize()}"
    return Variant


def _make(base_level: str, kind: str, **kwargs):
    spec = gym.spec(base_level)
    base_cls = gym.envs.registration.load_env_creator(spec.entry_point)
    cls = make_variant_class(base_cls, base_level, kind)
    return cls(**{**spec.kwargs, **kwargs})


def register_variants(base_levels: tuple[str, ...]) -> tuple[str, ...]:
    """Register paraphrases of every base level and compositions of COMPOSE_BASES with gymnasium."""
    names = []
    for base in base_levels:
        kinds = VARIANT_KINDS if base in COMPOSE_BASES else ("paraphrase",)
        for kind in kinds:
            name = variant_name(base, kind)
            if name not in gym.envs.registry:
                gym.register(name, entry_point=lambda base=base, kind=kind, **kw: _make(base, kind, **kw))
            names.append(name)
    return tuple(sorted(names))


def variant_origin(level: str) -> tuple[str, str]:
    """(base level, variant kind) of a registered level; (level, "") for a plain one."""
    if not level.startswith("LAM-"):
        return level, ""
    stem, kind = level.removeprefix("LAM-").removesuffix("-v0").rsplit("-", 1)
    return f"BabyAI-{stem}-v0", kind.lower()
