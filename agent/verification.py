"""The agent API's `verification`: the outcome verifier's score attached to each finished session.

    lam agent serve --verifier runs/verifier/best [--verifier-mode flag|confirm]

When a session finishes, the verifier (agent/outcome_verifier.py) reads its transcript and the session
gains `verification: {score, model, flagged}`: score = P(the environment would verify success), flagged =
the agent claimed done and the score is below the verifier's threshold. In `confirm` mode a flagged
session also says `confirm: true`: its claimed outcome should be confirmed by the user before it is
acted on. Kept in its own table of the sessions database, so a restart keeps it; a server started
without --verifier adds nothing to any session (the JSON is exactly what it was).
"""
from __future__ import annotations

import json
import sqlite3
import threading

from agent.outcome_verifier import OutcomeVerifier, load_verifier, steps_of_episode

MODES = ("flag", "confirm")


class SessionVerifier:
    def __init__(self, verifier: OutcomeVerifier, db_path: str, mode: str = "flag") -> None:
        if mode not in MODES:
            raise ValueError(f"--verifier-mode {mode!r}: expected one of {', '.join(MODES)}")
        self.verifier, self.mode = verifier, mode
        self._lock = threading.Lock()
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("CREATE TABLE IF NOT EXISTS verifications (session_id TEXT PRIMARY KEY, body TEXT)")

    @classmethod
    def load(cls, path: str, db_path: str, mode: str = "flag") -> "SessionVerifier":
        return cls(load_verifier(path), db_path, mode)

    def record(self, session_id: str, ep) -> dict:
        """Score a finished episode (agent/episode.py Episode) and keep the result for the session."""
        envs = self.verifier.meta.get("envs") or []
        if envs and ep.task.env not in envs:
            out = {"score": None, "model": self.verifier.name, "flagged": False,
                   "note": f"the verifier was trained on {', '.join(envs)} episodes, not {ep.task.env}"}
        else:
            try:
                out = self.verifier.verify(steps_of_episode(ep), ep.claimed_done, ep.final_state)
            except Exception as e:  # a verifier that breaks must not break the session it scores
                out = {"score": None, "model": self.verifier.name, "flagged": False,
                       "error": f"{type(e).__name__}: {str(e)[:300]}"}
        if self.mode == "confirm":
            out["confirm"] = out["flagged"]
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO verifications (session_id, body) VALUES (?, ?)",
                             (session_id, json.dumps(out)))
        return out

    def attach(self, row: dict) -> dict:
        """The session row with its `verification`, where the session has one."""
        with self._lock:
            found = self._db.execute("SELECT body FROM verifications WHERE session_id = ?", (row["id"],)).fetchone()
        if found:
            row["verification"] = json.loads(found[0])
        return row
