from agent.episode import RunnerConfig, run_episode
from agent.grounding import ground_text_action
from agent.policies import ExpertPolicy, ScriptedPolicy
from agent.prompt import Turn, render_messages, render_training_chunks
from envs.babyai import ACTION_NAMES, BabyAIEnv
from envs.base import Task

LEVEL = "BabyAI-GoToLocal-v0"


def test_grounding_accepts_valid_and_aliases_rejects_garbage():
    assert ground_text_action("go forward", ACTION_NAMES).action.name == "go forward"
    assert ground_text_action("  Turn Left.\nextra", ACTION_NAMES).action.name == "turn left"
    assert ground_text_action("forward", ACTION_NAMES).action.name == "go forward"
    assert ground_text_action("I will pick up the key", ACTION_NAMES).action.name == "pick up"
    bad = ground_text_action("fly to the moon", ACTION_NAMES)
    assert bad.action is None and "reply with one of" in bad.error
    assert ground_text_action("", ACTION_NAMES).action is None
    # two different actions in one answer are ambiguous, not silently the first
    assert ground_text_action("turn left then go forward", ACTION_NAMES).action is None


class _Garbage:
    """Emits garbage on the first try of every step, then the expert's action."""

    name = "garbage-then-expert"

    def begin(self, env, task):
        self.expert = env.make_expert()
        self.seen = []

    def act(self, messages, env, step, attempt):
        self.seen.append(messages)
        return "%%%" if attempt == 0 else self.expert.act().name


def test_invalid_output_gets_feedback_and_bounded_retry():
    env = BabyAIEnv()
    policy = _Garbage()
    ep = run_episode(env, policy, Task("babyai", LEVEL, 5), RunnerConfig(max_retries=1))
    assert ep.success
    assert all(s.retries == 1 and s.valid for s in ep.steps)
    retry_prompt = policy.seen[1]
    assert retry_prompt[-2] == {"role": "assistant", "content": "%%%"}
    assert "invalid action" in retry_prompt[-1]["content"]
    assert ep.invalid_actions == len(ep.steps)


def test_retries_exhausted_costs_a_step_and_executes_nothing():
    env = BabyAIEnv()
    ep = run_episode(env, ScriptedPolicy({}), Task("babyai", LEVEL, 5), RunnerConfig(max_steps=3))
    # ScriptedPolicy with no script claims "done" immediately: a claim, not a verified success
    assert ep.claimed_done and not ep.success and ep.false_success
    assert ep.end_reason == "claimed_done" and len(ep.steps) == 1


def test_claim_and_verdict_are_separate_for_planted_prefix():
    env = BabyAIEnv()
    task = Task("babyai", LEVEL, 11)
    full = run_episode(env, ExpertPolicy(), task, RunnerConfig())
    actions = [s.action for s in full.steps]
    assert full.success and len(actions) >= 2
    truncated = run_episode(env, ScriptedPolicy({task.task_id: actions[:-1]}), task, RunnerConfig())
    assert truncated.claimed_done and not truncated.success
    replayed = run_episode(env, ScriptedPolicy({task.task_id: actions}), task, RunnerConfig())
    assert replayed.success and not replayed.claimed_done


def test_prompt_windows_match_training_chunks():
    turns = [Turn(state=f"s{i}", feedback="blocked" if i == 3 else "", action=f"a{i}") for i in range(11)]
    chunks = render_training_chunks("go to the red ball", turns, ["x"], window=4)
    assert len(chunks) == 3
    # the prompt at every step must be a prefix of the training chunk that holds that step
    for t in range(len(turns)):
        prompt = render_messages("go to the red ball", turns[: t + 1], ["x"], window=4)
        chunk = chunks[t // 4]
        assert chunk[: len(prompt)] == prompt
        assert chunk[len(prompt)] == {"role": "assistant", "content": f"a{t}"}
        assert prompt[1]["content"].startswith("go to the red ball")
    assert "blocked\ns3" in chunks[0][7]["content"]
