"""serving.launch / serving.server / serving.vllm_backend: subprocess lifecycle, backend choice, vllm command.

    .venv/bin/python -m pytest tests/serving/test_serving_launch.py -q
"""
from __future__ import annotations

import json
import os
import sys
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from serving import server, vllm_backend
from serving.launch import find_free_port, start_server_subprocess


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a broken model path must fail fast, never reach for a hub


def test_subprocess_server_serves_and_drains_on_stop(tiny_model_dir):
    h = start_server_subprocess(tiny_model_dir, threads=1, api_key="sk-local")
    try:
        assert h.base_url == f"http://127.0.0.1:{h.port}/v1"
        c = openai.OpenAI(base_url=h.base_url, api_key="sk-local", max_retries=0)
        assert [m.id for m in c.models.list().data] == ["tiny-lam"]  # basename of the model dir
        assert c.chat.completions.create(model="tiny-lam", messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=4).choices[0].finish_reason in ("stop", "length")
        # A request in flight when SIGTERM arrives still completes (graceful shutdown).
        out = {}
        t = threading.Thread(target=lambda: out.update(r=c.completions.create(
            model="tiny-lam", prompt="x", max_tokens=200, temperature=0)))
        t.start()
        deadline = time.monotonic() + 20
        while not out and time.monotonic() < deadline and \
                "lam_active_sequences 1.0" not in httpx.get(h.root_url + "/metrics").text:
            time.sleep(0.02)
    finally:
        rc = h.stop()
    t.join(30)
    assert out["r"].choices[0].finish_reason in ("stop", "length")
    assert rc is not None and h.process.poll() is not None


def test_subprocess_failure_reports_output_tail(tmp_path):
    with pytest.raises(RuntimeError) as e:
        start_server_subprocess(str(tmp_path), threads=1, timeout=60)  # empty dir: no model
    assert "exited with code" in str(e.value) and "Error" in str(e.value)
    log = re.search(r"\(log: (\S+)\)", str(e.value)).group(1)  # kept for debugging; not needed here
    os.unlink(log)


def test_build_vllm_command(tmp_path):
    cmd = vllm_backend.build_vllm_command(str(tmp_path / "sft-final"), host="127.0.0.1", port=8123,
                                          chat_template="/t.jinja", vllm_bin="/opt/vllm")
    assert cmd == ["/opt/vllm", "serve", str(tmp_path / "sft-final"), "--host", "127.0.0.1", "--port", "8123",
                   "--served-model-name", "sft-final", "--chat-template", "/t.jinja",
                   "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]


def _fake_vllm(tmp_path: Path) -> str:
    """An executable that behaves like `vllm serve` far enough: records argv, answers GET /health."""
    exe = tmp_path / "vllm"
    exe.write_text(f"""#!{sys.executable}
import http.server, json, sys
json.dump(sys.argv[1:], open({str(tmp_path / 'argv.json')!r}, "w"))
port = int(sys.argv[sys.argv.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
""")
    exe.chmod(0o755)
    return str(exe)


def test_start_vllm_launches_and_health_checks(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("LAM_VLLM_BIN", _fake_vllm(tmp_path))
    port = find_free_port()
    h = vllm_backend.start_vllm(tiny_model_dir, port=port, timeout=30)
    try:
        assert httpx.get(h.root_url + "/health").status_code == 200
        argv = json.loads((tmp_path / "argv.json").read_text())
        assert argv[:2] == ["serve", tiny_model_dir] and argv[argv.index("--served-model-name") + 1] == "tiny-lam"
        assert argv[argv.index("--chat-template") + 1] == os.path.join(tiny_model_dir, "chat_template.jinja")
        assert "launching:" in capsys.readouterr().err  # the exact command is printed
    finally:
        h.stop(grace=5)
    assert h.process.poll() is not None


def test_auto_backend_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_VLLM_BIN", _fake_vllm(tmp_path))
    monkeypatch.setattr(vllm_backend, "cuda_available", lambda: False)
    assert server.resolve_backend("auto") == "transformers"  # no GPU
    monkeypatch.setattr(vllm_backend, "cuda_available", lambda: True)
    assert server.resolve_backend("auto") == "vllm"
    monkeypatch.setenv("LAM_VLLM_BIN", str(tmp_path / "missing"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert server.resolve_backend("auto") == "transformers"  # GPU but no vllm executable
    assert server.resolve_backend("vllm") == "vllm"
    with pytest.raises(ValueError):
        server.resolve_backend("tgi")


def test_no_module_imports_vllm():
    import serving.embedded
    import serving.openai_server

    assert serving.embedded.EmbeddedBackend and serving.openai_server.create_app

    assert "vllm" not in sys.modules
    for f in Path(server.__file__).parent.glob("*.py"):
        assert not re.search(r"^\s*(import vllm|from vllm\b)", f.read_text(), re.M), f


def test_gpu_benchmark_script_runs_on_cpu_with_a_tiny_config(tmp_path):
    # What bench/gpu_serve.sh runs on a GPU machine, shrunk: `python -m` from the repo root, JSON to $OUT.
    root = Path(server.__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_serve", "--tiny", "--concurrency", "1,3",
                           "--prompt-tokens", "8", "--new-tokens", "4", "--threads", "1"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_serve.json").read_text())
    assert report["device"] == "cpu" and [r["concurrency"] for r in report["results"]] == [1, 3]
    for r in report["results"]:
        assert r["generate_tokens_per_s"] > 0 and r["embedded_tokens_per_s"] > 0
    assert report["results"][1]["embedded_max_batch"] > 1  # the three requests were batched


def test_lam_serve_cli_forwards_every_server_flag(tiny_model_dir):
    """`lam serve` takes the server's own flags: batch size 1 and no prefix cache must show in /metrics."""
    h = start_server_subprocess(tiny_model_dir, threads=1, max_batch_size=1, model_name="cli-model",
                                entry=("-m", "cluster.cli", "serve"),
                                extra_args=["--prefix-cache-mb", "0", "--dtype", "float32", "--device", "cpu",
                                            "--prefill-thread", "off"])
    try:
        c = openai.OpenAI(base_url=h.base_url, api_key="none", max_retries=0)
        assert [m.id for m in c.models.list().data] == ["cli-model"]
        msgs = [{"role": "user", "content": "go to the red ball"}]
        threads = [threading.Thread(target=lambda: c.chat.completions.create(
            model="cli-model", messages=msgs, max_tokens=6, temperature=0)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        metrics = httpx.get(h.root_url + "/metrics").text
    finally:
        h.stop()
    # Four concurrent identical prompts: with batch size 32 they would share forward passes and hit the
    # prefix cache; the flags forbid both.
    sizes = {m.group(1): float(m.group(2)) for m in
             re.finditer(r'lam_batch_size_bucket\{le="([^"]+)",phase="decode"\} (\S+)', metrics)}
    assert sizes and sizes["1.0"] == sizes["+Inf"] > 0, metrics
    assert re.search(r"^lam_prefix_cache_hit_ratio 0\.0$", metrics, re.M), metrics
    assert re.search(r"^lam_prefill_thread 0\.0$", metrics, re.M), metrics


def test_lam_serve_rejects_settings_the_model_cannot_take_with_a_clear_error(tiny_model_dir):
    root = Path(server.__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "serve", "--model", tiny_model_dir, "--port", "1",
                           "--max-batch-size", "1", "--prefill-thread", "on"],
                          cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "Error: prefill_thread 'on' needs" in proc.stderr and "max_batch_size > 1" in proc.stderr
    assert "Traceback" not in proc.stderr
