"""The console's routes on the agent API's app: the page, its static files, and BabyAI frames.

    lam agent serve --port 8100    then open http://127.0.0.1:8100/

    GET /                              the console (static/console.html)
    GET /console/static/{name}         its stylesheet and script
    GET /console/frame.png?level=L&seed=S&a=ACTION&a=ACTION...
                                       the BabyAI world after those actions, re-run in plain minigrid (PNG)

A frame is a pure function of its query (level, seed, actions), so it reads no session: the page passes
the actions of the transcript it fetched with the user's key. With API keys it still asks for one, as every
route that does work does.
"""
from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Callable

from fastapi import Query, Request  # here, not in mount_console: FastAPI resolves the route's annotations by name

STATIC = Path(__file__).parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}
MAX_FRAME_ACTIONS = 2000  # a frame re-runs every action from reset: bound the work one request asks for


def static_response(name: str):
    """One file of static/ (by name only: nothing outside it can be asked for), or a 404."""
    from fastapi.responses import JSONResponse, Response

    path = STATIC / name
    if "/" in name or name.startswith(".") or path.suffix not in _TYPES or not path.is_file():
        return JSONResponse({"error": {"code": "not_found", "message": f"no console file {name!r}"}}, status_code=404)
    return Response(path.read_bytes(), media_type=_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})


def png(frame, size: int = 256) -> bytes:
    """An RGB frame (numpy HxWx3) as PNG bytes, at most `size` pixels a side."""
    from PIL import Image

    img = Image.fromarray(frame)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def babyai_frame(level: str, seed: int, actions: list[str]) -> bytes:
    """PNG of the world after `actions` (ValueError naming a bad level or action)."""
    from envs.babyai_frames import replay_frames

    if len(actions) > MAX_FRAME_ACTIONS:
        raise ValueError(f"{len(actions)} actions: a frame replays at most {MAX_FRAME_ACTIONS}")
    frames, _ = replay_frames(level, seed, actions, only_last=True)
    return png(frames[-1])


def mount_console(app, key_of: Callable) -> None:
    """Add the console's routes to the agent API's app. `key_of(request)`: the API's own key check
    (raises its 401 for a missing or unknown key where keys are required)."""
    from fastapi.responses import JSONResponse, Response

    @app.get("/", include_in_schema=False)
    async def console_page():
        return static_response("console.html")

    @app.get("/console/static/{name}", include_in_schema=False)
    async def console_static(name: str):
        return static_response(name)

    @app.get("/console/frame.png", include_in_schema=False)
    async def console_frame(request: Request, level: str, seed: int = Query(0, ge=0),
                            a: list[str] | None = Query(None)):
        key_of(request)
        try:  # a replay and a render: off the event loop, like the API's steps
            return Response(await asyncio.to_thread(babyai_frame, level, seed, a or []), media_type="image/png")
        except ValueError as e:
            return JSONResponse({"error": {"code": "invalid_frame", "message": str(e)}}, status_code=400)
