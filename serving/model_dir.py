"""Check a model directory before anything loads it: one clear error per missing or broken file.

    python -c "from serving.model_dir import check_model_dir as c; print(c('runs/train/export'))"

Models are local directories written by save_pretrained; nothing here (or in the loaders after it) looks
at a hub. The checks read headers only (no torch), so `lam serve` refuses a broken directory in well under a
second, before the port is bound and before vllm is launched.
"""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

EXAMPLE = "e.g. runs/quickstart/train/export"


class ModelDirError(ValueError):
    """The directory cannot be served as it is; the message names the file and what to do."""


def check_model_dir(model_dir: str, chat_template: str | None = None, need_chat: bool = True) -> str | None:
    """Raise ModelDirError unless `model_dir` has a config, complete weights and a tokenizer (and a chat
    template when `need_chat`); returns where the chat template comes from, or None."""
    root = Path(model_dir)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise ModelDirError(f"model directory {model_dir} {what}; pass --model a local directory written by "
                            f"save_pretrained ({EXAMPLE})")
    _check_config(root)
    _check_weights(root)
    _check_tokenizer(root)
    template = chat_template_source(root, chat_template)
    if need_chat and template is None:
        raise ModelDirError(f"{model_dir} has no chat template (no chat_template.jinja, no chat_template in "
                            "tokenizer_config.json), so /v1/chat/completions could not format messages; pass "
                            "--chat-template FILE, or --no-chat to serve /v1/completions only")
    return template


def chat_template_source(root: Path, chat_template: str | None = None) -> str | None:
    """The file a chat template comes from: the explicit one, chat_template.jinja/.json, tokenizer_config.json."""
    if chat_template:
        if not Path(chat_template).is_file():
            raise ModelDirError(f"chat template file {chat_template} does not exist; pass --chat-template a jinja "
                                "file")
        return chat_template
    for name in ("chat_template.jinja", "chat_template.json"):
        if (root / name).is_file():
            return str(root / name)
    if (root / "additional_chat_templates").is_dir() and any((root / "additional_chat_templates").iterdir()):
        return str(root / "additional_chat_templates")
    cfg = _read_json(root / "tokenizer_config.json", required=False)
    return str(root / "tokenizer_config.json") if cfg and cfg.get("chat_template") else None


def _read_json(path: Path, required: bool = True) -> dict | None:
    if not path.is_file():
        if required:
            raise ModelDirError(f"{path} is missing; pass --model a directory written by save_pretrained ({EXAMPLE})")
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{path} is not valid JSON ({e}); re-export the model") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{path} is not a JSON object; re-export the model")
    return data


def _check_config(root: Path) -> None:
    cfg = _read_json(root / "config.json")
    if not cfg.get("model_type") and not cfg.get("architectures"):
        raise ModelDirError(f"{root / 'config.json'} names no model_type; re-export the model with save_pretrained")


def _check_weights(root: Path) -> None:
    """Every weight file the directory lists is present and whole (safetensors: header vs file size)."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = root / index_name
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            if not shards:
                raise ModelDirError(f"{index} lists no weight files; re-export the model")
            for shard in shards:
                _check_weight_file(root / shard, listed_in=index)
            return
        if (root / single).is_file():
            _check_weight_file(root / single)
            return
    raise ModelDirError(f"{root} has no weights (model.safetensors, its index, or pytorch_model.bin); re-export "
                        "the model with save_pretrained, or point --model at the export directory")


def _check_weight_file(path: Path, listed_in: Path | None = None) -> None:
    if not path.is_file():
        raise ModelDirError(f"weight file {path} is missing (listed in {listed_in}); copy it again or re-export")
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        problem = _safetensors_problem(path, size)
    else:
        problem = _torch_zip_problem(path)
    if problem:
        raise ModelDirError(f"weight file {path} is {problem}; copy it again or re-export the model")


def _safetensors_problem(path: Path, size: int) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header with each tensor's byte range, then data."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated ({size} bytes)"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"truncated ({size} bytes, header alone needs {n + 8})"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "not a safetensors file (unreadable header)"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
            and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2]
    need = 8 + n + max(ends, default=0)
    if size < need:
        return f"truncated ({size} of {need} bytes)"
    return None


def _torch_zip_problem(path: Path) -> str | None:
    """torch.save files are zip archives; a truncated one has no central directory at its end."""
    with open(path, "rb") as f:
        if f.read(2) != b"PK":
            return None  # the legacy pickle format: the loader checks it
    try:
        with zipfile.ZipFile(path):
            return None
    except zipfile.BadZipFile:
        return "truncated or corrupt (not a readable zip archive)"


def _check_tokenizer(root: Path) -> None:
    """A fast tokenizer (tokenizer.json) or the files a slow one is built from; without them transformers
    reaches for sentencepiece and says to install it, which is not the problem."""
    if (root / "tokenizer.json").is_file():
        try:
            json.loads((root / "tokenizer.json").read_text())
        except (OSError, ValueError) as e:
            raise ModelDirError(f"{root / 'tokenizer.json'} is not valid JSON ({e}); save the tokenizer again "
                                "(tokenizer.save_pretrained)") from None
        return
    if (root / "tokenizer.model").is_file() or ((root / "vocab.json").is_file() and (root / "merges.txt").is_file()):
        return
    raise ModelDirError(f"{root} has no tokenizer.json; save the tokenizer into the model directory "
                        "(tokenizer.save_pretrained(DIR)) or copy tokenizer.json next to config.json")
