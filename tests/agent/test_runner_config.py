"""RunnerConfig is the one definition of the runner's settings: the agent API's request objects are
derived from it, and its dict form (over Ray, in eval's fingerprint) holds only the fields set."""
import pytest
from pydantic import ValidationError

from agent.api import LIMITS, Limits, RunnerOptions
from agent.episode import RunnerConfig as FromEpisode
from agent.runner_config import RunnerConfig, wire


def test_api_request_objects_split_runner_config_exactly():
    assert FromEpisode is RunnerConfig
    assert list(Limits.model_fields) == list(LIMITS)
    assert set(Limits.model_fields) | set(RunnerOptions.model_fields) == set(RunnerConfig.model_fields)
    assert not set(Limits.model_fields) & set(RunnerOptions.model_fields)
    with pytest.raises(ValidationError):  # the public API keeps its caps; internal runs have none
        Limits(max_steps=100_001)
    assert RunnerConfig(max_steps=100_001).max_steps == 100_001
    assert Limits(max_steps=None).max_steps is None  # null: the runner's default


def test_wire_holds_the_fields_set_in_field_order():
    cfg = RunnerConfig(history_window=8, max_steps=64)
    cfg.time_limit_s = 60.0
    assert list(wire(cfg).items()) == [("max_steps", 64), ("history_window", 8), ("time_limit_s", 60.0)]
    assert wire(cfg.model_copy(update={"max_steps": 9}))["max_steps"] == 9
    assert wire({"time_limit_s": 60}) == {"time_limit_s": 60}  # a dict is kept as given (its bytes too)
    with pytest.raises(ValidationError):
        wire({"max_stepz": 3})
    assert RunnerConfig(**wire(RunnerConfig(confirm="deny"))) == RunnerConfig(confirm="deny")
