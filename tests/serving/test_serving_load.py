"""Load: 2,000 mixed requests from 64 concurrent clients against a server subprocess on 127.0.0.1.

    .venv/bin/python -m pytest tests/serving/test_serving_load.py -q -m slow      # ~1 minute

Zero 5xx, zero dropped connections, every bad request answered 4xx, and the server's resident memory after
the last thousand requests within 10% of what it was after the first thousand. The numbers come from
bench/serve_load.py, which prints the same report for any server.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from serving.launch import start_server_subprocess

BENCH = Path(__file__).resolve().parents[2] / "bench" / "serve_load.py"


@pytest.mark.slow
def test_2000_requests_64_clients_no_errors_no_leak(tiny_model_dir):
    spec = importlib.util.spec_from_file_location("serve_load", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    server = start_server_subprocess(tiny_model_dir, threads=1, api_key="load-key",
                                     extra_args=["--log-level", "warning"])
    try:
        report = bench.run_load(server.base_url, server.model_name, requests=2000, concurrency=64,
                                api_key="load-key", pid=server.pid)
    finally:
        server.stop()
    print(report)
    assert report["completed"] == 2000
    assert report["server_errors_5xx"] == 0 and report["dropped_connections"] == 0, report["statuses"]
    assert report["unexpected"] == 0, report["statuses"]
    assert report["rss_growth_second_half"] < 0.10, report
