"""The pure parts of the headline benchmark (benchmarks/search.py): which front points it
exports, and how a baseline is compared with the measured ones. The run itself needs the
trained supernet, the predictor and the profile; `benchmarks/search.py --quick` checks it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from lifelong.search.front import Front, FrontPoint

ROOT = Path(__file__).resolve().parents[1]


def _load_module():
    spec = importlib.util.spec_from_file_location("search_benchmark", ROOT / "benchmarks" / "search.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


S = _load_module()


def _front(n: int = 20) -> Front:
    """Latency 0.1 ... 2 ms at batch 1, accuracy rising with it."""
    pts = [
        FrontPoint(f"p{i:02d}", 0.80 + 0.006 * i, {1: 0.1 * (i + 1), 32: 2.0 * (i + 1)}, 1000 * (i + 1), 0)
        for i in range(n)
    ]
    return Front(tuple(reversed(pts)))


def test_spread_points_covers_both_ends_evenly_in_log_latency() -> None:
    picked = [p.subnet for p in S.spread_points(_front(), 4, 1)]
    assert picked[0] == "p00" and picked[-1] == "p19"
    assert len(set(picked)) == 4
    assert picked == ["p00", "p02", "p06", "p19"]  # log-spaced: 0.1, ~0.27, ~0.74, 2 ms
    assert [p.subnet for p in S.spread_points(_front(3), 8, 1)] == ["p00", "p01", "p02"]


def test_pick_points_adds_the_points_each_target_asks_about() -> None:
    aims = {"cnn_int8": (0.55, 0.87)}  # the most accurate within 0.55 ms is p04; the fastest >= 87% is p12
    picked = S.pick_points(_front(), 2, 1, aims)
    names = [p.subnet for p, _ in picked]
    assert names == ["p00", "p04", "p12", "p19"]  # ordered by latency
    why = dict((p.subnet, w) for p, w in picked)
    assert why["p04"] == ["most accurate within cnn_int8's latency"]
    assert why["p12"] == ["fastest at cnn_int8's top-1"]
    assert why["p00"] == ["spread"]


def _row(name: str, top1: float, ms1: float) -> dict:
    return {"subnet": name, "top1": top1, "measured_ms": {"1": ms1, "32": 20 * ms1}}


def test_compare_finds_the_gain_at_latency_and_the_speedup_at_accuracy() -> None:
    points = [_row("fast", 0.90, 0.10), _row("mid", 0.92, 0.20), _row("slow", 0.93, 0.40)]
    c = S.compare(points, base_top1=0.915, base_ms=0.30, batch=1)
    assert c["gain_point"] == "mid" and c["gain_at_latency_pt"] == pytest.approx(0.5)
    assert c["speedup_point"] == "mid" and c["speedup_at_accuracy"] == pytest.approx(1.5)
    none = S.compare(points, base_top1=0.95, base_ms=0.05, batch=1)
    assert none["gain_at_latency_pt"] is None and none["speedup_at_accuracy"] is None
    b32 = S.compare(points, base_top1=0.915, base_ms=4.0, batch=32)  # the batch-32 figures are used
    assert b32["gain_point"] == "mid" and b32["speedup_at_accuracy"] == pytest.approx(1.0)


def test_compare_can_use_the_figures_before_fine_tuning() -> None:
    points = [_row("fast", 0.90, 0.10), _row("mid", 0.92, 0.20)]
    points[1]["supernet_top1"], points[0]["supernet_top1"] = 0.89, 0.90  # mid gained 3 pt from fine-tuning
    after = S.compare(points, base_top1=0.915, base_ms=0.30, batch=1)
    before = S.compare(points, base_top1=0.915, base_ms=0.30, batch=1, key="supernet_top1")
    assert after["gain_point"] == "mid" and after["gain_at_latency_pt"] == pytest.approx(0.5)
    assert before["gain_point"] == "fast" and before["gain_at_latency_pt"] == pytest.approx(-1.5)
    assert before["speedup_at_accuracy"] is None  # nothing reached 91.5% on supernet weights


def test_a_fine_tuned_point_says_so_in_the_table() -> None:
    row = {**_row("mid", 0.92, 0.2), "bytes": 1000, "supernet_top1": 0.8927, "finetune": {"seconds": 300.0}}
    table = S.markdown_table({}, [row, {**_row("fast", 0.9, 0.1), "bytes": 10}], 1)
    assert "front `mid` (fine-tuned 300 s; 89.27% before) | 92.00" in table
    assert "front `fast` | 90.00" in table


def test_the_thread_rerun_compares_each_baseline_at_the_counts_it_was_given() -> None:
    spec = importlib.util.spec_from_file_location("search_threads_benchmark", ROOT / "benchmarks" / "search_threads.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)

    def row(top1: float, own: float, two: float, front: bool) -> dict:
        return {"top1": top1, "front": front, "own_ms": {"1": own}, "two_ms": {"1": two}}

    rows = {
        "tutorial CNN INT8": row(0.913, 0.10, 0.14, False),
        "tutorial CNN FP32": row(0.913, 0.12, 0.15, False),  # FP32 baselines are not compared
        "front a": row(0.920, 0.06, 0.07, True),  # as accurate, faster
        "front b": row(0.925, 0.09, 0.15, True),  # more accurate, within the baseline's latency on its own count
    }
    (own,) = module.compare(rows, "own_ms", 1)
    assert own["baseline"] == "tutorial CNN INT8"
    assert own["gain_at_latency_pt"] == pytest.approx(1.2) and own["speedup_at_accuracy"] == pytest.approx(0.10 / 0.06)
    (two,) = module.compare(rows, "two_ms", 1)
    assert two["gain_at_latency_pt"] == pytest.approx(0.7), "front b is over 0.14 ms at two threads"
    assert two["speedup_at_accuracy"] == pytest.approx(0.14 / 0.07)
