"""The README's commands, parsed out of README.md and run as written in a temporary directory
(only `--episodes` is made small and the agent API's port is a free one): what a new user copies must work.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cluster import cli
from serving.launch import ServerProcess, find_free_port

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    """The text under a `## title` / `### title` heading, up to the next heading."""
    m = re.search(rf"^#+ {re.escape(title)}\b.*?$(.*?)(?=^#+ |\Z)", README, re.M | re.S)
    assert m, f"README has no section {title!r}"
    return m.group(1)


def _commands(text: str) -> list[str]:
    """Command lines of the ```bash blocks in `text`, continuation lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        out += [ln.strip() for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]
    return out


def _command(text: str, *prefix: str) -> list[str]:
    """The first command in `text` that starts with `prefix`, as argv (a trailing `# comment` dropped)."""
    for line in _commands(text):
        argv = shlex.split(line, comments=True)
        if argv[:len(prefix)] == list(prefix):
            return argv
    raise AssertionError(f"README has no `{' '.join(prefix)}` command there")


# issue 21 item 14
def test_readme_collect_stats_show(tmp_path, ray_local, monkeypatch, capsys):
    collect = _command(_section("The stages one by one"), "lam", "collect")
    stats = _command(_section("Collecting data"), "lam", "data", "stats")
    show = _command(_section("Collecting data"), "lam", "data", "show")
    episode = show[show.index("--episode") + 1]
    # ids are LEVEL-SEED and seeds are drawn 0, 1, 2, ...: collect enough to reach the README's example id
    n = max(12, int(episode.rsplit("-", 1)[1]) + 1)
    assert n <= 60, f"the README's example episode {episode} needs a large collection; pick a small seed"
    argv = collect[1:]
    argv[argv.index("--episodes") + 1] = str(n)  # the only change to the README's command
    monkeypatch.chdir(tmp_path)

    assert cli.main(argv) == 0
    assert cli.main(stats[1:]) == 0
    out = capsys.readouterr().out
    for level in collect[collect.index("--levels") + 1].split(","):
        assert level in out
    # the README's example id must exist after the README's own collect command (fixed on branch fix/collect)
    assert cli.main(show[1:]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"episode  {episode}")
    # an id that does not exist (a PickupLoc seed under the GoToLocal name): the error offers real ids
    assert cli.main(show[1:-1] + [episode.rsplit("-", 1)[0] + "-17"]) == 2
    assert "try BabyAI-GoToLocal-v0-" in capsys.readouterr().err


def _curl(argv: list[str]) -> str:
    """Run a README curl line; without the curl binary, send what curl would (-d: form-urlencoded)."""
    if shutil.which("curl"):
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if "-d" in argv else {}
    for i, a in enumerate(argv):
        if a == "-H":
            k, _, v = argv[i + 1].partition(":")
            headers[k.strip()] = v.strip()
    url = next(a for a in argv[1:] if a.startswith("localhost") or a.startswith("http"))
    url = url if url.startswith("http") else "http://" + url
    if "-d" in argv:
        return httpx.post(url, content=argv[argv.index("-d") + 1], headers=headers, timeout=60).text
    return httpx.get(url, timeout=60).text


# issue 21 item 14
def test_readme_agent_curl(tmp_path):
    text = _section("Agents: one runner, text actions and tool calls")
    serve = _command(text, "lam", "agent", "serve")
    port = str(find_free_port())
    readme_port = serve[serve.index("--port") + 1]
    lines = [shlex.split(ln.replace(f"localhost:{readme_port}", f"localhost:{port}"), comments=True)
             for ln in _commands(text) if ln.startswith("curl ")]
    create = next(a for a in lines if "-d" in a)
    get = next(a for a in lines if "-d" not in a and a[-1].endswith("/ID"))
    events = next(a for a in lines if a[-1].endswith("/ID/events"))

    serve[serve.index("--port") + 1] = port
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", *serve[1:]], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = ServerProcess(proc, "127.0.0.1", int(port), str(tmp_path / "serve.log"), "agent-api")
    try:
        server.wait_healthy(60)
        # the README's line as written works; without -H (curl -d alone says form-urlencoded) the answer is
        # a 415 naming the header, not a 422 blaming a field (form bodies are not read: CSRF from browsers)
        no_header = [a for i, a in enumerate(create) if a != "-H" and (i == 0 or create[i - 1] != "-H")]
        refused = json.loads(_curl(no_header))
        assert refused["error"]["code"] == "unsupported_media_type", refused
        assert "Content-Type: application/json" in refused["error"]["message"]
        row = json.loads(_curl(create))
        assert "id" in row and row["env"] == "bfcl" and row["status"] in ("running", "finished"), row
        sid = row["id"]
        deadline = time.time() + 30
        while (row := json.loads(_curl(get[:-1] + [get[-1].replace("/ID", f"/{sid}")])))["status"] == "running":
            assert time.time() < deadline, row
            time.sleep(0.2)
        assert row["status"] == "finished" and row["transcript"], row
        stream = _curl(events[:-1] + [events[-1].replace("/ID/", f"/{sid}/")])
        assert stream.rstrip().splitlines()[-2] == "event: end", stream[-300:]
        assert (tmp_path / "runs" / "agent" / "sessions.db").exists()  # the README's --db, relative to cwd
    finally:
        server.stop()
