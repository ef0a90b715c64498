"""Worlds agents act in. Nothing here knows about models, Ray or files."""
from envs.base import Action, Environment, Observation, StepResult, Task
from envs.registry import get_env_spec, list_envs, make_env

__all__ = ["Action", "Environment", "Observation", "StepResult", "Task", "get_env_spec", "list_envs", "make_env"]
