"""YAML configs read, and `key=value` overrides of them parsed, in one place for every command that takes them:

    lam pipeline --config configs/quickstart.yaml --set collect.episodes=200 --set eval.also=[]
    lam train --data runs/data --config configs/train/tiny.yaml --out runs/train lr=1e-3 lora.r=16
    lam cluster submit ... --env RAY_DEDUP_LOGS=0

A value is read as YAML (`3` is an int, `[a, b]` a list, `null` None); a dotted key sets a nested one.
"""
from __future__ import annotations

from pathlib import Path


def split_pair(kv: str, what: str = "override", form: str = "key=value",
               error: type[Exception] = ValueError) -> tuple[str, str]:
    """"a.b=c" -> ("a.b", "c"); without "=", `error` saying what the word must look like."""
    key, sep, value = kv.partition("=")
    if not sep:
        raise error(f"{what} {kv!r} must look like {form}")
    return key, value


def apply_overrides(raw: dict, overrides: list[str], form: str = "key=value",
                    error: type[Exception] = ValueError) -> dict:
    """Set each `dotted.key=yaml value` in `raw` (in place, and returned); a missing or null section
    is created; a key under a plain value is refused."""
    import yaml

    for kv in overrides:
        key, value = split_pair(kv, form=form, error=error)
        *parents, leaf = key.split(".")
        node = raw
        for name in parents:
            node[name] = {} if node.get(name) is None else node[name]
            if not isinstance(node[name], dict):
                raise error(f"override {kv!r}: {name!r} is a value, not a section with keys")
            node = node[name]
        node[leaf] = yaml.safe_load(value)
    return raw


def read_yaml(path: str | Path, error: type[Exception] = ValueError) -> dict:
    """The mapping in the YAML file at `path` ({} when empty); a missing file, bad YAML or a top level
    that is not a mapping raise `error` with one line saying which (`lam pipeline` and `lam train` alike)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise error(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(raw, dict):
        raise error(f"{path}: top level must be a mapping of sections")
    return raw
