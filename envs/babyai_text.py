"""Render a BabyAI partial observation as text, in the BabyAI-Text convention.

    facing east, carrying nothing
    a wall 3 steps forward
    a red ball 2 steps forward and 1 step left

Relative positions come from the agent-centred 7x7 view (agent at column 3, bottom row),
so the text holds exactly what the agent can see, never hidden state.
"""
from __future__ import annotations

import numpy as np
from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT

DIRECTIONS = ["east", "south", "west", "north"]
DOOR_STATES = {0: "open", 1: "closed", 2: "locked"}


def _steps(n: int, word: str) -> str:
    return f"{n} step{'s' if n != 1 else ''} {word}"


def _where(forward: int, side: int) -> str:
    parts = []
    if forward > 0:
        parts.append(_steps(forward, "forward"))
    if side < 0:
        parts.append(_steps(-side, "left"))
    elif side > 0:
        parts.append(_steps(side, "right"))
    return " and ".join(parts)


def describe_object(obj_type: str, color: str, state: int) -> str:
    if obj_type == "door":
        return f"a {DOOR_STATES.get(state, 'closed')} {color} door"
    return f"a {color} {obj_type}"


def render_view(image: np.ndarray, agent_dir: int, carrying: str | None) -> str:
    """image: the (7, 7, 3) encoded partial view from `env.gen_obs()['image']`."""
    width, height = image.shape[0], image.shape[1]
    ax, ay = width // 2, height - 1  # the agent's own cell in view coordinates
    lines = [f"facing {DIRECTIONS[agent_dir]}, carrying {carrying or 'nothing'}"]

    # Walls: only the nearest one straight ahead, to the left and to the right (BabyAI-Text).
    def first_wall(cells):
        for dist, (i, j) in enumerate(cells, start=1):
            kind = IDX_TO_OBJECT[int(image[i, j, 0])]
            if kind == "wall":
                return dist
            if kind != "empty" and kind != "floor":
                return None  # something else blocks the line of sight
        return None

    for word, cells in (
        ("forward", [(ax, ay - d) for d in range(1, height)]),
        ("left", [(ax - d, ay) for d in range(1, ax + 1)]),
        ("right", [(ax + d, ay) for d in range(1, width - ax)]),
    ):
        dist = first_wall(cells)
        if dist is not None:
            lines.append(f"a wall {_steps(dist, word)}")

    objects = []
    for i in range(width):
        for j in range(height):
            kind = IDX_TO_OBJECT[int(image[i, j, 0])]
            if kind in ("unseen", "empty", "wall", "floor", "agent"):
                continue
            forward, side = ay - j, i - ax
            if forward == 0 and side == 0:
                continue
            color = IDX_TO_COLOR[int(image[i, j, 1])]
            text = f"{describe_object(kind, color, int(image[i, j, 2]))} {_where(forward, side)}"
            objects.append((forward + abs(side), forward, side, text))
    lines.extend(t for *_, t in sorted(objects))
    return "\n".join(lines)
