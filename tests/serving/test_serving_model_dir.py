"""`lam serve` refuses a broken model directory at start-up: one line naming the file and what to do.

    .venv/bin/python -m pytest tests/serving/test_serving_model_dir.py -q
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from test_serving_launch import _fake_vllm

from serving import vllm_backend
from serving.launch import find_free_port, start_server_subprocess
from serving.model_dir import ModelDirError, check_model_dir

ROOT = Path(__file__).resolve().parents[2]


def _broken(src: str, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    if how == "no-tokenizer":
        (dst / "tokenizer.json").unlink()
    elif how == "no-weights":
        (dst / "model.safetensors").unlink()
    elif how == "truncated-weights":
        with open(dst / "model.safetensors", "r+b") as f:
            f.truncate(f.seek(0, os.SEEK_END) // 2)
    elif how == "no-chat-template":
        (dst / "chat_template.jinja").unlink()
    elif how == "missing-shard":  # a sharded export whose second shard was not copied
        (dst / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    return dst


CASES = {  # how the directory is broken -> (file the error must name, words of the advice)
    "nonexistent": ("{dir}", "does not exist"),
    "no-tokenizer": ("{dir}", "no tokenizer.json"),
    "no-weights": ("{dir}", "has no weights"),
    "truncated-weights": ("{dir}/model.safetensors", "truncated"),
    "missing-shard": ("{dir}/model-00002-of-00002.safetensors", "is missing"),
    "no-chat-template": ("{dir}", "--no-chat"),
}


def _lam_serve(model: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", "serve", "--model", model, "--port",
                           str(find_free_port()), "--num-threads", "1", *extra],
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=120)


# issue 21 item 8
@pytest.mark.parametrize("how", list(CASES))
def test_lam_serve_refuses_a_broken_model_dir_in_one_line(how, tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    if how != "nonexistent":
        _broken(tiny_model_dir, model, how)
    proc = _lam_serve(str(model))
    named, advice = CASES[how]
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 1, out
    assert len(out.splitlines()) == 1 and out.startswith("Error: "), out  # no traceback, no hub message
    assert named.format(dir=model) in out and advice in out, out
    assert "Repo id" not in out and "sentencepiece" not in out


# issue 21 item 8
def test_vllm_is_not_launched_on_a_broken_model_dir(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_VLLM_BIN", _fake_vllm(tmp_path))
    model = _broken(tiny_model_dir, tmp_path / "model", "no-weights")
    with pytest.raises(ModelDirError, match="has no weights"):
        vllm_backend.start_vllm(str(model), port=find_free_port(), timeout=30)
    assert not (tmp_path / "argv.json").exists()  # the fake vllm never ran
    proc = _lam_serve(str(tmp_path / "nonexistent"), "--backend", "vllm")
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "argv.json").exists()


# issue 21 item 8
def test_no_chat_serves_completions_and_says_the_model_has_no_chat_template(tiny_model_dir, tmp_path):
    model = _broken(tiny_model_dir, tmp_path / "plain", "no-chat-template")
    assert check_model_dir(str(model), need_chat=False) is None
    h = start_server_subprocess(str(model), threads=1, extra_args=["--no-chat"], env={**os.environ,
                                                                                      "HF_HUB_OFFLINE": "1"})
    try:
        r = httpx.post(h.base_url + "/completions", json={"model": "plain", "prompt": "go", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        r = httpx.post(h.base_url + "/chat/completions",
                       json={"model": "plain", "messages": [{"role": "user", "content": "hi"}]})
        err = r.json()["error"]
        assert r.status_code == 400 and err["code"] == "chat_not_supported"
        assert "server's model 'plain' has no chat template" in err["message"]
    finally:
        h.stop()


# issue 21 item 8
def test_chat_template_flag_gives_a_model_its_template(tiny_model_dir, tmp_path):
    model = _broken(tiny_model_dir, tmp_path / "plain", "no-chat-template")
    template = tmp_path / "t.jinja"
    template.write_text((Path(tiny_model_dir) / "chat_template.jinja").read_text())
    h = start_server_subprocess(str(model), threads=1, extra_args=["--chat-template", str(template)])
    try:
        r = httpx.post(h.base_url + "/chat/completions", timeout=60,
                       json={"model": "plain", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert r.status_code == 200, r.text
    finally:
        h.stop()
