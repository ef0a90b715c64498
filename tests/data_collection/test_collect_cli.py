"""`lam collect`, `lam data stats`, `lam data show` as a user runs them."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from cluster.cli import main
from data_collection.store import TrajectoryStore, group_episodes

ROOT = Path(__file__).resolve().parents[2]


def test_collect_then_grow_with_resume(tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["collect", "--levels", "BabyAI-GoToLocal-v0,BabyAI-PickupLoc-v0", "--workers", "0", "--out", str(out),
            "--shard-episodes", "8", "--no-progress"]
    assert main(args + ["--episodes", "12"]) == 0
    assert json.loads(capsys.readouterr().out)["kept"] == 12
    assert main(args + ["--episodes", "12"]) == 2  # exists: says to pass --resume
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--episodes", "20", "--resume"]) == 0
    eps = group_episodes(TrajectoryStore(out).read_records("train"))
    assert len(eps) == len({e[0]["episode_id"] for e in eps}) == 20
    assert {e[0]["level"] for e in eps} == {"BabyAI-GoToLocal-v0", "BabyAI-PickupLoc-v0"}


def test_collect_errors_are_one_line(tmp_path, capsys):
    assert main(["collect", "--levels", "BabyAI-Nope-v0", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "BabyAI-Nope-v0" in err and "--list-levels" in err and len(err.strip().splitlines()) == 1
    assert main(["collect", "--levels", "BabyAI-UnlockToUnlock-v0", "--time-limit-s", "0", "--out", str(tmp_path / "b")]) == 2
    assert "needs a per-episode time limit" in capsys.readouterr().err
    assert main(["collect", "--tasks", "BabyAI-GoToLocal-v0", "--variants", "twice", "--out", str(tmp_path / "c")]) == 2
    assert "unknown variant 'twice'" in capsys.readouterr().err
    assert main(["collect", "--list-levels"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert "BabyAI-GoToLocal-v0" in listed and "LAM-GoToLocal-Then-v0" in listed
    assert not [x for x in listed if x.startswith(("BabyAI-KeyInBox", "BabyAI-PutNextS5N2Carrying"))]


def test_data_stats_and_show(bot_dataset, capsys, tmp_path):
    out, _ = bot_dataset
    assert main(["data", "stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "240 of 240 requested" in text and "| BabyAI-GoToLocal-v0 |" in text
    assert main(["data", "stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["train_episodes"] == 240
    eid = group_episodes(TrajectoryStore(out).read_records("train"))[5][0]["episode_id"]
    assert main(["data", "show", str(out), "--episode", eid]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"episode  {eid}") and "request  go to" in text and "step 0" in text
    assert "success, verified by the environment" in text and "facing" in text
    assert main(["data", "show", str(out), "--episode", "nope"]) == 2
    assert "no episode 'nope'" in capsys.readouterr().err
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    victim = TrajectoryStore(bad).shard_paths("train")[0]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    assert main(["data", "stats", str(bad)]) == 2
    assert victim.name in capsys.readouterr().err


# issue 21 item 14
def test_ctrl_c_names_the_command_that_resumes_and_that_command_finishes(tmp_path):
    out = tmp_path / "ds"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    lam = [sys.executable, "-m", "cluster.cli"]
    cmd = ["collect", "--levels", "BabyAI-GoToLocal-v0", "--episodes", "150", "--workers", "0", "--shard-episodes", "5",
           "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(lam + cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            manifest = out / "manifest.json"
            if manifest.exists() and len(json.loads(manifest.read_text()).get("batches", {})) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"collect ended before it could be interrupted: {proc.communicate()}"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    said = re.search(r"continue with: (.+)$", err.strip())
    assert said, err
    again = shlex.split(said.group(1))
    assert again[:2] == ["lam", "collect"] and again[-1] == "--resume" and again[2:-1] == cmd[1:]
    done = subprocess.run(lam + again[1:], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kept"] == 150
