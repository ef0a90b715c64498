"""The outcome verifier: transcripts that hide the verdict, a task-disjoint split, `lam train-verifier` end
to end on real tool-world episodes, checkpoints refused for another tokenizer or schema, `lam eval
--verifier`, and DPO pairing by the verifier's score where no verdict exists."""
import json
import shutil

import pytest

from agent.outcome_verifier import (TranscriptStep, VerifierCheckpointError, load_verifier, transcript_messages)
from data_collection.schema import SCHEMA_VERSION
from tests.training.verifier_episodes import tiny_verifier, write_episodes
from training.verifier_data import Example, split_by_task
from training.verifier_metrics import caught_at_rate, verifier_metrics


def _text_step(action, claim="", state="s"):
    return TranscriptStep([{"role": "system", "content": "sys"}, {"role": "user", "content": f"go\n{state}"}],
                          action, action, True, "", claim, False)


def test_a_text_space_claim_is_left_out_so_the_transcript_hides_the_verdict():
    # BabyAI: a success ends before any claim; a false success ends with "done". Both must look alike.
    success = [_text_step("go forward", state="a"), _text_step("turn left", state="b")]
    false_success = success + [_text_step("done", claim="done", state="c")]
    assert transcript_messages(success) == transcript_messages(false_success)
    assert transcript_messages(success)[-1] == {"role": "assistant", "content": "turn left"}
    assert all(m["role"] != "system" for m in transcript_messages(success))
    # a tool-space reply is the agent's claim and stays
    reply = TranscriptStep([{"role": "user", "content": "do it"}], "Done.", "Done.", True, "", "done", True)
    assert transcript_messages([reply])[-1] == {"role": "assistant", "content": "Done."}
    # the state the last action left closes the transcript: what tells a success from a false claim
    assert transcript_messages(success, "at the goal")[-1] == {"role": "user", "content": "at the goal"}
    assert transcript_messages(false_success, "short of it")[-2:] == [
        {"role": "assistant", "content": "turn left"}, {"role": "user", "content": "short of it"}]
    bumped = [_text_step("go forward"), TranscriptStep(success[1].messages, "go forward", "go forward", True,
                                                       "blocked by the wall", "", False)]
    assert transcript_messages(bumped, "view")[-1] == {"role": "user", "content": "blocked by the wall\nview"}
    assert transcript_messages([reply], "ignored")[-1] == {"role": "assistant", "content": "Done."}  # tool space


def test_the_final_state_is_rebuilt_by_replay_and_is_what_the_runner_ended_in():
    """Records keep each step's decision state; the state the last action left comes from a replay, equal
    to what the live runner ended in (the agent API scores a session with the latter)."""
    from agent.episode import RunnerConfig, run_episode
    from agent.policy_factory import build_policy
    from data_collection.schema import episode_rows
    from envs.base import Task
    from envs.registry import make_env
    from training.verifier_data import FinalStates

    env, final_states = make_env("babyai"), FinalStates()
    kinds = set()
    for seed in range(6):
        for policy in ({"kind": "expert"}, {"kind": "prefix-expert", "seed": seed}, {"kind": "random", "seed": seed}):
            ep = run_episode(env, build_policy(policy), Task("babyai", "BabyAI-GoToLocal-v0", seed),
                             RunnerConfig(max_steps=12))
            rows = episode_rows(ep)
            assert final_states(rows) == ep.final_state, (policy, seed)
            kinds.add(ep.end_reason)
            if ep.success:  # a record whose verdict the replay contradicts is refused, not shown
                rows[-1].episode_success = False
                with pytest.raises(ValueError, match="replaying its actions gives success"):
                    final_states(rows)
    assert {"success", "claimed_done", "step_limit"} <= kinds


def _ex(task, label, claimed, env="toolworld"):
    return Example("e", env, task, "p", "src", label, claimed or label, claimed, "", [])


def test_split_is_by_task_and_metrics_count_false_successes():
    exs = [_ex(f"toolworld/L1/{i % 40}", i % 2 == 0, True) for i in range(400)]
    train, val, test = split_by_task(exs, 0.3, 0.1, seed=0)
    tasks = [{e.task for e in part} for part in (train, val, test)]
    assert not (tasks[0] & tasks[2]) and not (tasks[1] & tasks[2]) and not (tasks[0] & tasks[1])
    assert len(train) + len(val) + len(test) == 400 and test and val
    # four claims, two of them false; the lowest-scoring half of the claims flagged catches both
    exs = [_ex("a", True, True), _ex("b", False, True), _ex("c", True, True), _ex("d", False, True)]
    assert caught_at_rate([0.9, 0.1, 0.8, 0.2], exs, 0.5) == (2, 2)
    m = verifier_metrics([0.9, 0.1, 0.8, 0.2], exs, 0.5, 0.5)
    assert m["auroc"] == 1.0 and m["status_accuracy"] == 1.0 and m["false_successes"] == 2


@pytest.fixture(scope="session")
def verifier_run(tmp_path_factory):  # the tiny verifier: trained once per session, ~30 s idle
    return tiny_verifier(tmp_path_factory.getbasetemp() / "tiny-verifier")


def test_train_verifier_reports_every_method_on_held_out_tasks(verifier_run):
    report = json.loads((verifier_run / "report.json").read_text())
    rows = {(r["world"], r["method"]): r for r in report["table"]}
    assert {m for w, m in rows if w == "toolworld"} == {"agent's claim", "verifier (scratch)", "TF-IDF + LR"}
    ours, claim = rows[("toolworld", "verifier (scratch)")], rows[("toolworld", "agent's claim")]
    assert ours["false_successes"] > 5 and ours["episodes"] == claim["episodes"]
    # nearly every episode here claims done (all but random callers that hit the step limit): the claim
    # tells little apart, the verifier much more
    assert ours["auroc"] >= 0.8 and ours["auroc"] >= claim["auroc"] + 0.2, (ours, claim)
    v = load_verifier(verifier_run / "best", SCHEMA_VERSION)
    assert v.meta["schema_version"] == SCHEMA_VERSION and v.meta["envs"] == ["toolworld"]


def test_a_checkpoint_for_another_tokenizer_or_schema_is_refused(verifier_run, tmp_path, capsys):
    from cluster.cli import main
    from training.tokenizer import train_tokenizer

    bad = tmp_path / "other-schema"
    shutil.copytree(verifier_run / "best", bad)
    meta = json.loads((bad / "verifier.json").read_text())
    (bad / "verifier.json").write_text(json.dumps({**meta, "schema_version": SCHEMA_VERSION - 1}))
    with pytest.raises(VerifierCheckpointError, match=f"trajectory schema v{SCHEMA_VERSION - 1}"):
        load_verifier(bad, SCHEMA_VERSION)
    (bad / "verifier.json").write_text(json.dumps({**meta, "transcript_version": 99}))
    with pytest.raises(VerifierCheckpointError, match="transcript schema v99"):
        load_verifier(bad)
    # the checkpoint's tokenizer swapped for another one: ids would mean other text
    other = tmp_path / "other-tokenizer"
    shutil.copytree(verifier_run / "best", other)
    shutil.rmtree(other / "tokenizer")
    train_tokenizer(["some other text entirely"] * 50, vocab_size=300).save_pretrained(str(other / "tokenizer"))
    with pytest.raises(VerifierCheckpointError, match="not the tokenizer it was trained with"):
        load_verifier(other)
    # the command line says so in one line, before any episode runs
    assert main(["eval", "--policy", "expert", "--episodes", "1", "--verifier", str(other),
                 "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lam eval: error: verifier") and "tokenizer" in err and "\n" not in err
    assert main(["eval", "--policy", "expert", "--verifier", str(tmp_path / "nope")]) == 2
    assert "is not a verifier checkpoint" in capsys.readouterr().err


def test_dpo_pairs_by_the_verifier_score_where_no_verdict_exists(verifier_run, tmp_path):
    from data_collection.store import TrajectoryStore
    from training.dpo import make_pairs
    from training.dpo_verifier import verifier_pairs

    rows = []
    for name, policy in (("expert", {"kind": "expert"}), ("partial", {"kind": "prefix-expert", "seed": 5, "max_prefix": 1})):
        root = write_episodes(tmp_path / name, policy, 24, base_seed=777)
        rows += TrajectoryStore(root).read_rows("episodes")
    truth = {r.episode_id: r.episode_success for r in rows}
    for r in rows:  # deployment: no environment gave a verdict
        r.episode_success = r.verified_success = False
    assert make_pairs(rows, 100, 0) == []  # the verdict-based pairing has nothing to go on
    pairs = verifier_pairs(rows, str(verifier_run / "best"), 100, 0, margin=0.5)
    assert len(pairs) >= 4
    right = sum(truth[c[0].episode_id] and not truth[r[0].episode_id] for c, r in pairs)
    assert right / len(pairs) >= 0.8, (right, len(pairs))
