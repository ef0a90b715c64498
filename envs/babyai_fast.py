"""Faster equivalents of two minigrid hot spots, used by `BabyAIEnv` and its bot expert.

Profiling a GoToLocal collection showed ~60% of the time in `gen_obs_grid` (a 7x7 grid slice,
rotated cell by cell one to four times, then occlusion; ~0.3 ms of CPU), computed three times per
step: by `env.step`, by our renderer, and by the bot. `fast_gen_obs` computes the same observation dict
directly in view coordinates; `FastBabyAIBot` reads its visibility from the last observation
instead of recomputing it, and uses a deque in its BFS. Both are drop-in: the image, hence the
rendered text, and the bot's actions are identical to minigrid's (tests/envs check it against
`MiniGridEnv.gen_obs` and the stock `BabyAIBot` step by step).

`FastBabyAIBot` also guards against the bot's one known infinite loop (UnlockToUnlock: its subgoal
stack grows forever inside one `replan`) by raising `BotStuck` after too many subgoal pushes.
"""
from __future__ import annotations

from collections import deque

import numpy as np
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX
from minigrid.core.world_object import Wall
from minigrid.utils.baby_ai_bot import BabyAIBot

_EMPTY = (OBJECT_TO_IDX["empty"], 0, 0)
_UNSEEN = (OBJECT_TO_IDX["unseen"], 0, 0)
_WALL = Wall()
_WALL_CODE = (OBJECT_TO_IDX["wall"], COLOR_TO_IDX["grey"], 0)
# (forward, right) unit vectors for agent_dir 0..3 (east, south, west, north), as DIR_TO_VEC.
_DIR = [((1, 0), (0, 1)), ((0, 1), (-1, 0)), ((-1, 0), (0, -1)), ((0, -1), (1, 0))]


def fast_gen_obs(u) -> dict:
    """`MiniGridEnv.gen_obs()` for an unwrapped minigrid env `u`, without building Grid objects."""
    sz, hs = u.agent_view_size, u.agent_view_size // 2
    grid = u.grid
    width, height, cells = grid.width, grid.height, grid.grid
    (dx, dy), (rx, ry) = _DIR[u.agent_dir]
    ax, ay = u.agent_pos
    # view[i][j]: column i (left to right), row j (far to near); the agent sits at (hs, sz - 1).
    view = []
    for i in range(sz):
        col = []
        side = i - hs
        for j in range(sz):
            fwd = sz - 1 - j
            x, y = ax + dx * fwd + rx * side, ay + dy * fwd + ry * side
            col.append(cells[y * width + x] if 0 <= x < width and 0 <= y < height else _WALL)
        view.append(col)

    if u.see_through_walls:
        mask = [[True] * sz for _ in range(sz)]
    else:  # Grid.process_vis, line for line
        mask = [[False] * sz for _ in range(sz)]
        mask[hs][sz - 1] = True
        for j in reversed(range(sz)):
            for i in range(sz - 1):
                if not mask[i][j]:
                    continue
                cell = view[i][j]
                if cell is not None and not cell.see_behind():
                    continue
                mask[i + 1][j] = True
                if j > 0:
                    mask[i + 1][j - 1] = mask[i][j - 1] = True
            for i in reversed(range(1, sz)):
                if not mask[i][j]:
                    continue
                cell = view[i][j]
                if cell is not None and not cell.see_behind():
                    continue
                mask[i - 1][j] = True
                if j > 0:
                    mask[i - 1][j - 1] = mask[i][j - 1] = True

    view[hs][sz - 1] = u.carrying  # the agent sees what it carries, in its own cell
    codes = []  # Grid.encode: unseen cells stay (0, 0, 0)
    for i in range(sz):
        col, mcol = view[i], mask[i]
        for j in range(sz):
            v = col[j]
            codes.append((_EMPTY if v is None else _WALL_CODE if v is _WALL else v.encode()) if mcol[j] else _UNSEEN)
    image = np.array(codes, dtype=np.uint8).reshape(sz, sz, 3)
    return {"image": image, "direction": u.agent_dir, "mission": u.mission}


def install_fast_obs(u) -> None:
    """Make `u.step()`/`u.reset()` use `fast_gen_obs` (an instance attribute, so only `u` changes)."""
    u.gen_obs = fast_gen_obs.__get__(u)


class BotStuck(RuntimeError):
    """The bot's planner keeps pushing subgoals without ever choosing an action."""


class _GuardedStack(list):
    """The bot's subgoal stack, counting pushes per replan() so an endless plan raises instead."""

    limit = 1000

    def __init__(self, *a) -> None:
        super().__init__(*a)
        self.pushes = 0

    def append(self, item) -> None:
        self.pushes += 1
        if self.pushes > self.limit:
            raise BotStuck(f"the BabyAI bot pushed {self.limit} subgoals in one step without acting")
        super().append(item)


class FastBabyAIBot(BabyAIBot):
    """minigrid's BabyAIBot with visibility read from `last_image()` (the observation the env
    just produced) and a deque BFS. Same plans and actions as the stock bot."""

    def __init__(self, mission, last_image) -> None:
        self._last_image = last_image  # () -> the (7, 7, 3) image of the current observation
        super().__init__(mission)
        self.stack = _GuardedStack(self.stack)

    def replan(self, action_taken=None):
        self.stack.pushes = 0
        return super().replan(action_taken)

    def _process_obs(self):
        u = self.mission.unwrapped
        image = self._last_image()
        size = u.agent_view_size
        f, r = u.dir_vec, u.right_vec
        top_left = u.agent_pos + f * (size - 1) - r * (size // 2)
        vis_i, vis_j = np.nonzero(image[:, :, 0] != OBJECT_TO_IDX["unseen"])  # == gen_obs_grid's vis_mask
        abs_i = top_left[0] - f[0] * vis_j + r[0] * vis_i
        abs_j = top_left[1] - f[1] * vis_j + r[1] * vis_i
        inside = (abs_i >= 0) & (abs_i < self.vis_mask.shape[0]) & (abs_j >= 0) & (abs_j < self.vis_mask.shape[1])
        self.vis_mask[abs_i[inside], abs_j[inside]] = True

    def _breadth_first_search(self, initial_states, accept_fn, ignore_blockers):
        # BabyAIBot._breadth_first_search with a deque instead of `queue = queue[1:]` (quadratic).
        self.bfs_counter += 1
        queue = deque((state, None) for state in initial_states)
        grid = self.mission.unwrapped.grid
        cells, width = grid.grid, grid.width  # grid.get(i, j) without the call; walls bound the search
        vis_mask = self.vis_mask
        previous_pos = dict()
        while queue:
            state, prev_pos = queue.popleft()
            i, j, di, dj = state
            if (i, j) in previous_pos:
                continue
            self.bfs_step_counter += 1
            cell = cells[j * width + i]
            previous_pos[(i, j)] = prev_pos
            if accept_fn((i, j), cell):
                path = []
                pos = (i, j)
                while pos:
                    path.append(pos)
                    pos = previous_pos[pos]
                return path, (i, j), previous_pos
            if not vis_mask[i, j]:
                continue
            if cell:
                if cell.type == "wall":
                    continue
                elif cell.type == "door":
                    if not cell.is_open:
                        continue
                elif not ignore_blockers:
                    continue
            for k, l in ((di, dj), (dj, di), (-dj, -di), (-di, -dj)):
                queue.append(((i + k, j + l, k, l), (i, j)))
        return None, None, previous_pos
