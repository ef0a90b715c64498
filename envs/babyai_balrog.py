"""BALROG's BabyAI task set as BabyAI levels, one per goal type (issue 17).

    lam collect --env babyai --levels LAM-BALROG-GoTo-v0,LAM-BALROG-Pickup-v0,LAM-BALROG-Open-v0,\
LAM-BALROG-PutNext-v0,LAM-BALROG-PickupThenGoTo-v0 --episodes 1000 --out /tmp/balrog
    python bench/balrog_levels.py --seeds 200        # the bot and random on every goal type

BALROG evaluates BabyAI on GLAM's `MixedTrainLocal` (babyai-text, Carta et al. 2023): one 8x8 room with 8
objects (keys, balls, boxes; colours and types may repeat), the agent placed at random, and one of five goals:
go to an object, pick one up, open a door (then the layout is two rooms joined by a locked door whose key lies
in the agent's room, so the key must be fetched first), put one object next to another, and pick one up then
go to another (said as "pick up A, then go to B" or "go to B after you pick up A"). Episodes end after 100
steps; success is binary (minigrid's instruction verifier). Written here from that published definition, one
registered level per goal type so that every goal gets its own seeds and its own result; the mixed level
draws the goal type from the seed as the original does.
"""
from __future__ import annotations

import gymnasium as gym
from minigrid.envs.babyai.core.roomgrid_level import RejectSampling, RoomGridLevel
from minigrid.envs.babyai.core.verifier import (AfterInstr, BeforeInstr, GoToInstr, ObjDesc, OpenInstr,
                                                PickupInstr, PutNextInstr)

GOALS = ("GoTo", "Pickup", "Open", "PutNext", "PickupThenGoTo")
MAX_STEPS = 100  # BALROG's limit for BabyAI
ROOM_SIZE, NUM_OBJECTS = 8, 8


def level_id(goal: str) -> str:
    return f"LAM-BALROG-{goal}-v0"


class BalrogLevel(RoomGridLevel):
    """One goal type of MixedTrainLocal; goal "Mixed" draws it from the seed."""

    def __init__(self, goal: str, room_size: int = ROOM_SIZE, num_objects: int = NUM_OBJECTS, **kwargs):
        if goal not in GOALS + ("Mixed",):
            raise ValueError(f"unknown BALROG goal type {goal!r}: expected one of {', '.join(GOALS)} or Mixed")
        self.goal, self.num_objects = goal, num_objects
        # The open task is two rooms side by side; the others are the one 8x8 room (the mixed level, which
        # learns its goal only at reset, always has both rooms: the others never leave room 0).
        kwargs.setdefault("max_steps", MAX_STEPS)
        super().__init__(num_rows=1, num_cols=1 if goal in GOALS and goal != "Open" else 2, room_size=room_size,
                         **kwargs)

    def gen_mission(self):
        goal = self.goal if self.goal != "Mixed" else self._rand_elem(list(GOALS))
        self.place_agent(0, 0)
        if self.num_cols == 2:
            door, _ = self.add_door(0, 0, door_idx=0, locked=True)  # the east wall: the only neighbour
        if goal == "Open":
            self.add_object(0, 0, "key", door.color)
            self.add_distractors(0, 0, num_distractors=self.num_objects - 1, all_unique=False)
            self.check_objs_reachable()
            self.instrs = OpenInstr(ObjDesc("door", door.color))
            return
        objs = self.add_distractors(0, 0, num_distractors=self.num_objects, all_unique=False)
        self.check_objs_reachable()
        first = self._rand_elem(objs)
        if goal == "GoTo":
            self.instrs = GoToInstr(ObjDesc(first.type, first.color))
        elif goal == "Pickup":
            self.instrs = PickupInstr(ObjDesc(first.type, first.color))
        else:
            others = [o for o in objs if (o.type, o.color) != (first.type, first.color)]
            if not others:  # all eight the same object: vanishingly rare; draw again
                raise RejectSampling("no second object to name")
            second = self._rand_elem(others)
            a, b = ObjDesc(first.type, first.color), ObjDesc(second.type, second.color)
            if goal == "PutNext":
                self.instrs = PutNextInstr(a, b)
            elif self._rand_bool():
                self.instrs = BeforeInstr(PickupInstr(a), GoToInstr(b))
            else:
                self.instrs = AfterInstr(GoToInstr(b), PickupInstr(a))


def register_balrog_levels() -> tuple[str, ...]:
    names = []
    for goal in GOALS + ("Mixed",):
        name = level_id(goal)
        if name not in gym.envs.registry:
            gym.register(name, entry_point=lambda goal=goal, **kw: BalrogLevel(goal, **kw))
        names.append(name)
    return tuple(names)
