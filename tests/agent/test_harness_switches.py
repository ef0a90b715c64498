"""Each harness switch (RunnerConfig.harness_off, `lam eval --ablate`) really switches its part of the
runner off, and the whole harness stays exactly as it was when none is off."""
import pytest

from agent.episode import RunnerConfig, run_episode
from agent.planted import FaultyExpertPolicy
from agent.policies import ExpertPolicy
from agent.runner_config import HARNESS, wire
from envs.babyai import BabyAIEnv
from envs.base import Task
from envs.registry import make_env

TASK = Task("babyai", "BabyAI-GoToLocal-v0", 1_000_003, "test")


class NeedsFeedback:
    """Says `fly` first; on a retry it plays the expert only if the runner told it why `fly` was refused.
    Records every prompt it was given."""

    name = "needs-feedback"

    def begin(self, env, task):
        self.expert, self.prompts = env.make_expert(), []

    def act(self, messages, env, step, attempt):
        self.prompts.append(messages)
        told = "invalid action 'fly'" in messages[-1]["content"]
        return self.expert.act().name if attempt > 0 and told else "fly"


def _run(policy, **cfg):
    return run_episode(BabyAIEnv(), policy, TASK, RunnerConfig(max_steps=30, **cfg))


def test_default_runner_config_is_the_whole_harness_and_its_dict_form_is_unchanged():
    assert RunnerConfig().harness_off == [] and all(RunnerConfig().has(c) for c in HARNESS)
    assert wire(RunnerConfig(max_steps=64)) == {"max_steps": 64}  # eval fingerprints hold only what was set
    with pytest.raises(ValueError):
        RunnerConfig(harness_off=["wings"])


def test_feedback_off_the_policy_is_never_told_and_never_recovers():
    on, off = NeedsFeedback(), NeedsFeedback()
    told, blind = _run(on), _run(off, harness_off=["feedback"])
    assert told.success and told.invalid_actions == len(told.steps)  # one refused `fly` per step, then right
    assert not blind.success and blind.end_reason == "step_limit"
    assert blind.invalid_actions == 3 * 30 and not any(s.valid for s in blind.steps)
    # the retry prompt is the first prompt again: no refused output, no error, no env feedback lines
    assert all(p[-1]["content"].count("invalid action") == 0 for p in off.prompts)
    assert all(on.prompts[i] != on.prompts[i + 1] for i in range(0, 6, 2))


def test_retry_off_one_try_per_step():
    policy = NeedsFeedback()
    ep = _run(policy, harness_off=["retry"])
    assert len(policy.prompts) == len(ep.steps) == 30 and all(s.retries == 0 and not s.valid for s in ep.steps)


def test_grounding_off_only_exact_names_run_and_refusals_of_full_grounding_are_counted():
    class Sentences:
        name = "sentences"

        def begin(self, env, task):
            self.expert = env.make_expert()

        def act(self, messages, env, step, attempt):
            return f"I will {self.expert.act().name}." if attempt == 0 else self.expert.act().name

    on, off = _run(Sentences()), _run(Sentences(), harness_off=["grounding"])
    assert on.success and on.invalid_actions == 0  # grounding finds the action inside the sentence
    assert off.success and off.invalid_actions == len(off.steps)  # without it, each first try is refused


def test_safety_off_forbidden_actions_run_and_are_counted():
    class Dropper:
        name = "dropper"

        def begin(self, env, task):
            pass

        def act(self, messages, env, step, attempt):
            return "drop"

    guarded = run_episode(BabyAIEnv(), Dropper(), TASK, RunnerConfig(max_steps=3, safety={"drop": "forbidden"}))
    loose = run_episode(BabyAIEnv(), Dropper(), TASK,
                        RunnerConfig(max_steps=3, safety={"drop": "forbidden"}, harness_off=["safety"]))
    assert guarded.blocked_actions == 3 and guarded.unsafe_actions == 0
    assert loose.blocked_actions == 0 and loose.unsafe_actions == 3
    assert [s.feedback for s in loose.steps] == ["nothing dropped"] * 3  # it really ran


def test_memory_off_prompts_hold_the_current_step_only():
    class Recorder(ExpertPolicy):
        def begin(self, env, task):
            super().begin(env, task)
            self.prompts = []

        def act(self, messages, env, step, attempt):
            self.prompts.append(messages)
            return super().act(messages, env, step, attempt)

    full, bare = Recorder(), Recorder()
    _run(full, memory={"short_term_k": 3})
    _run(bare, memory={"short_term_k": 3}, harness_off=["memory"])
    k = len(full.prompts) - 1  # the last step: system, k + 1 user turns, k actions (all in one window of 8)
    assert 1 <= k < 8 and len(full.prompts[k]) == 2 * k + 2 and "Recent steps" in full.prompts[k][0]["content"]
    assert all(len(p) == 2 and "Recent steps" not in p[0]["content"] for p in bare.prompts)


def test_tool_world_faulty_expert_needs_feedback_and_the_guard():
    """The tool world through the same switches: memory off keeps the request and the latest call."""
    env, cfg = make_env("toolworld"), dict(max_steps=40, safety={"rm": "forbidden"})
    tasks = [Task("toolworld", lvl, seed, "test") for lvl in ("L3", "L5") for seed in range(1_000_000, 1_000_006)]

    def totals(off):
        eps = [run_episode(env, FaultyExpertPolicy(p_invalid=0.5, p_unsafe=0.5), t, RunnerConfig(**cfg, harness_off=off))
               for t in tasks]
        return sum(e.success for e in eps), sum(e.invalid_actions for e in eps), sum(e.unsafe_actions for e in eps)

    full, blind, loose = totals([]), totals(["feedback"]), totals(["safety"])
    assert full[2] == 0 and loose[2] > 0  # stray removals run only without the guard
    assert blind[0] < full[0] and blind[1] > full[1]  # told nothing, a misnamed call is never fixed


def test_focus_puts_the_lines_about_the_request_last_and_off_keeps_the_environments_order():
    from agent.prompt import focus_view

    view = ("facing west, carrying nothing\na red ball 2 steps left\na blue key 1 step right\n"
            "a red key 3 steps forward\na wall 1 step forward")
    # word pairs first ("red ball", "blue key"), then shared words ("red key" shares two), ties in env order
    assert focus_view("put the red ball next to the blue key", view).split("\n") == [
        "facing west, carrying nothing", "a wall 1 step forward", "a red key 3 steps forward",
        "a red ball 2 steps left", "a blue key 1 step right"]
    assert focus_view("go to the purple box", view) == view  # nothing relevant: untouched
    assert focus_view("go to the red ball", "a red ball 1 step left") == "a red ball 1 step left"

    class Records(ExpertPolicy):
        def begin(self, env, task):
            super().begin(env, task)
            self.prompts = []

        def act(self, messages, env, step, attempt):
            self.prompts.append(messages[-1]["content"])
            return super().act(messages, env, step, attempt)

    on, off = Records(), Records()
    a, b = _run(on), _run(off, harness_off=["focus"])
    assert a.success and b.success and [s.action for s in a.steps] == [s.action for s in b.steps]
    target = a.request.split(" ", 3)[-1]  # "go to the X" -> "X"
    moved = 0
    for step, p_on, p_off in zip(a.steps, on.prompts, off.prompts):
        assert p_off.endswith(step.state)  # off: the view exactly as the environment wrote it
        shown = p_on.split("\n")[-len(step.state.split("\n")):]
        assert sorted(shown) == sorted(step.state.split("\n"))  # the same lines, only the order moves
        if target in step.state:
            assert target in shown[-1]
            moved += shown != step.state.split("\n")
    assert moved > 0
