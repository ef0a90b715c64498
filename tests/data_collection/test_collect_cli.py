"""`lam collect`, `lam data stats`, `lam data show` as a user runs them."""
import json

from cluster.cli import main
from data_collection.store import TrajectoryStore, group_episodes


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
