"""Stopping what a test started, by PID: never `ray stop`, which would end every Ray on the machine."""
from __future__ import annotations

import psutil


def stop_processes(procs: list[psutil.Process], grace_s: float = 8.0) -> None:
    """SIGTERM each, SIGKILL what is still alive after grace_s, then reap."""
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
