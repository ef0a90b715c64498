"""Start the serving stack as a subprocess and wait until it is healthy (used by eval, bench and tests).

    python -c "from serving.launch import start_server_subprocess as s; h = s('MODEL_DIR', threads=2); \
print(h.base_url); h.stop()"

This module imports nothing heavy (no torch/transformers), so callers stay light.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_model_name(model_dir: str) -> str:
    """Name a model is served under when none is given: the basename of its directory."""
    return Path(os.path.normpath(str(model_dir))).name or "model"


def find_free_port(host: str = "127.0.0.1") -> int:
    # Small race (another process may take it before the server binds) - acceptable for local launches.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """Handle on a server subprocess: `base_url` (…/v1), `root_url`, `pid`, `wait_healthy()`, `stop()`."""

    def __init__(self, process: subprocess.Popen, host: str, port: int, log_path: str, model_name: str):
        self.process, self.host, self.port, self.log_path, self.model_name = process, host, port, log_path, model_name
        url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.root_url = f"http://{url_host}:{port}"
        self.base_url = f"{self.root_url}/v1"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_tail(self, chars: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - chars))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_healthy(self, timeout: float = 120.0, path: str = "/health") -> "ServerProcess":
        """Poll GET {root_url}{path} until 200; raise with the log tail if the process dies or time runs out."""
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            rc = self.process.poll()
            if rc is not None:
                raise RuntimeError(f"server process {self.pid} exited with code {rc} before becoming healthy "
                                   f"(log: {self.log_path}); output tail:\n{self.stderr_tail()}")
            try:
                if httpx.get(self.root_url + path, timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                tail = self.stderr_tail()
                self.stop()
                raise TimeoutError(f"server {self.root_url} not healthy after {timeout:.0f}s; output tail:\n{tail}")
            time.sleep(0.1)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM this PID (uvicorn drains in-flight requests), SIGKILL it after `grace` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        rc = self.process.returncode
        if rc in (0, -signal.SIGTERM):
            try:
                os.unlink(self.log_path)  # keep the log only when something went wrong
            except OSError:
                pass
        return rc

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def popen_logged(cmd: list[str], env: dict | None = None, prefix: str = "lam-serve-",
                 inherit_output: bool = False) -> tuple[subprocess.Popen, str]:
    """Start `cmd` with stdout+stderr in a temp log file (a pipe nobody reads could fill up and block it)."""
    if inherit_output:  # foreground use: the child's logs go straight to our terminal
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, cwd=str(REPO_ROOT)), ""
    fd, log_path = tempfile.mkstemp(prefix=prefix, suffix=".log")
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=str(REPO_ROOT))
    return proc, log_path


def start_server_subprocess(model_dir: str, port: int = 0, threads: int | None = None, *,
                            host: str = "127.0.0.1", max_batch_size: int = 32, api_key: str | None = None,
                            model_name: str | None = None, backend: str = "transformers",
                            max_new_tokens_limit: int | None = None, timeout: float = 120.0,
                            extra_args: list[str] | tuple = (), env: dict | None = None,
                            python: str | None = None,
                            entry: tuple[str, ...] = ("-m", "serving.server")) -> ServerProcess:
    """Run `python -m serving.server --model DIR --port P ...`, wait for /health, return its handle.

    entry: what follows the interpreter, e.g. ("-m", "cluster.cli", "serve") to run `lam serve`.

    port=0 picks a free port. The API key travels in the LAM_API_KEY env var, not argv (visible in ps).
    """
    port = port or find_free_port(host)
    name = model_name or default_model_name(model_dir)
    cmd = [python or sys.executable, *entry, "--model", str(model_dir), "--host", host,
           "--port", str(port), "--backend", backend, "--max-batch-size", str(max_batch_size),
           "--served-model-name", name]
    if threads:
        cmd += ["--num-threads", str(threads)]
    if max_new_tokens_limit:
        cmd += ["--max-new-tokens", str(max_new_tokens_limit)]
    cmd += list(extra_args)
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")]))
    if api_key is not None:
        child_env["LAM_API_KEY"] = api_key
    else:
        child_env.pop("LAM_API_KEY", None)  # an inherited key would lock out a caller that passed none
    if threads:  # size OpenMP/MKL pools like torch's: oversubscribed spin-waits are very slow on CPU
        child_env["OMP_NUM_THREADS"] = str(threads)
    # The server shares its cores with rollout actors and environments: idle OpenMP threads that spin take
    # their CPU (server CPU per agent step 17.4 -> 9.8 ms, rollout steps/s +9%, bench/RESULTS.md "Rollout")
    child_env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    proc, log_path = popen_logged(cmd, child_env)
    handle = ServerProcess(proc, host, port, log_path, name)
    try:
        return handle.wait_healthy(timeout)
    except BaseException:
        handle.stop()
        raise
