"""The scaling bench's quick mode: 10x the episodes through the one fleet as an evaluation costs at most
11x the wall time and 1.5x the driver's peak RSS (bench/fleet_scale.py; the full 10k/100k run is by hand)."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_fleet_scale_is_linear_in_time_and_flat_in_memory():
    spec = importlib.util.spec_from_file_location("fleet_scale", ROOT / "bench" / "fleet_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    summary = bench.main(["--quick", "--workers", "2"])
    assert [r["episodes_total"] for r in summary["runs"]] == [500, 5000]
    assert summary["runs"][0]["success_rate"] > 0.9
    assert summary["rss_ratio"] <= 1.5 and summary["wall_ratio"] <= 11, summary
