from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest

from lifelong.errors import DataError, FormatVersionError
from lifelong.search.front import Front, FrontPoint, choose, plot_front
from policies import Budgets, Objective, Policy, Target, load_preset, preset_names

MB = 1_000_000


def _point(name: str, acc: float, ms1: float, size: int, peak: int | None = None, ms32: float | None = None):
    return FrontPoint(name, acc, {1: ms1, 32: ms1 * 20 if ms32 is None else ms32}, size, peak or 2 * size)


# A hand-made front: faster points are less accurate, as on a real one.
FRONT = Front(
    (
        _point("tiny", 0.80, 0.3, 200_000),
        _point("small", 0.86, 0.8, 600_000),
        _point("mid", 0.89, 2.2, 1_500_000),
        _point("big", 0.895, 4.5, 3_500_000),
        _point("huge", 0.91, 12.0, 9 * MB),
    ),
    {"seed": 3},
)


def _policy(
    latency: float | None = None,
    size: int | None = None,
    peak: int | None = None,
    batch: int = 1,
    objective: Objective | None = None,
) -> Policy:
    return Policy(
        target=Target(batch=batch),
        budgets=Budgets(latency_ms_p95=latency, model_bytes=size, peak_memory_bytes=peak),
        objective=objective or Objective(),
    )


# -- choose ---------------------------------------------------------------------------------------
def test_max_accuracy_takes_the_most_accurate_point_within_every_budget() -> None:
    assert choose(FRONT, _policy()).subnet == "huge"
    assert choose(FRONT, _policy(latency=5.0)).subnet == "big"
    assert choose(FRONT, _policy(latency=4.5)).subnet == "big", "budgets are met inclusively"
    assert choose(FRONT, _policy(latency=5.0, size=2 * MB)).subnet == "mid"
    assert choose(FRONT, _policy(peak=1_300_000)).subnet == "small"  # peak = 2 x size here
    assert choose(FRONT, _policy(latency=0.1)) is None


def test_the_budget_applies_at_the_policys_batch_size() -> None:
    # at batch 32 the points take 20x longer: a 50 ms budget admits "mid" (44 ms) but not "big"
    assert choose(FRONT, _policy(latency=50.0, batch=32)).subnet == "mid"
    # batch 8 was not profiled: interpolated between batch 1 and 32 (mid: 2.2 + 41.8 * 7/31 = 11.6 ms)
    assert FRONT["mid"].latency_at(8) == pytest.approx(2.2 + 41.8 * 7 / 31)
    assert choose(FRONT, _policy(latency=12.0, batch=8)).subnet == "mid"
    assert choose(FRONT, _policy(latency=11.0, batch=8)).subnet == "small"
    assert FRONT["mid"].latency_at(64) == pytest.approx(44.0 + 41.8 * 32 / 31)  # extrapolated


def test_utility_trades_whole_spans_by_the_weights() -> None:
    # within 5 ms: tiny..big. Accuracy span 0.80..0.895, latency span 0.3..4.5 ms.
    by_hand = {
        name: (acc - 0.80) / 0.095 - w * (ms - 0.3) / 4.2
        for w in [0.2]
        for name, acc, ms in [("tiny", 0.8, 0.3), ("small", 0.86, 0.8), ("mid", 0.89, 2.2), ("big", 0.895, 4.5)]
    }
    assert max(by_hand, key=by_hand.get) == "mid"
    utility = Objective(kind="utility", accuracy_weight=1.0, latency_weight=0.2)
    assert choose(FRONT, _policy(latency=5.0, objective=utility)).subnet == "mid"
    # only ratios matter
    scaled = Objective(kind="utility", accuracy_weight=10.0, latency_weight=2.0)
    assert choose(FRONT, _policy(latency=5.0, objective=scaled)).subnet == "mid"
    # latency as heavy as accuracy: the span of latency outweighs the last accuracy points
    fast = Objective(kind="utility", accuracy_weight=1.0, latency_weight=1.0)
    assert choose(FRONT, _policy(latency=5.0, objective=fast)).subnet == "small"
    # no accuracy weight at all: the smallest, fastest point
    cheap = Objective(kind="utility", accuracy_weight=0.0, latency_weight=1.0, size_weight=1.0)
    assert choose(FRONT, _policy(objective=cheap)).subnet == "tiny"


def test_measured_figures_override_predictions() -> None:
    # "big" measured slower than predicted: it no longer fits 5 ms
    slow = FRONT.with_measurement("big", latency_ms={1: 6.0}, accuracy=0.90)
    assert choose(slow, _policy(latency=5.0)).subnet == "mid"
    assert choose(slow, _policy(latency=5.0), measured=False).subnet == "big"
    # "mid" measured more accurate than "big" predicted
    better = FRONT.with_measurement("mid", accuracy=0.92)
    assert choose(better, _policy(latency=5.0)).subnet == "mid"
    # an exported file larger than the weights estimate counts against the size budget
    fat = FRONT.with_measurement("mid", model_bytes=2_500_000)
    assert choose(fat, _policy(latency=5.0, size=2 * MB)).subnet == "small"
    assert FRONT["big"].measured_latency_ms is None, "with_measurement returns a copy"


def test_choose_is_pure_and_ignores_point_order() -> None:
    policy = _policy(latency=5.0, objective=Objective(kind="utility", latency_weight=0.3, size_weight=0.1))
    first = choose(FRONT, policy)
    points = list(FRONT.points)
    for seed in range(5):
        random.Random(seed).shuffle(points)
        assert choose(Front(tuple(points)), policy) == first
    assert choose(FRONT, policy) == first and FRONT.points[0].subnet == "tiny"
    twins = Front((_point("b", 0.9, 1.0, 100), _point("a", 0.9, 1.0, 100)))
    assert choose(twins, _policy()).subnet == "a", "full ties go to the name"


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_gets_a_point_within_its_budgets(preset: str) -> None:
    policy = load_preset(preset)
    # the latency is scaled so each preset's budget cuts the front somewhere in the middle
    budget = policy.budgets.latency_ms_p95
    front = Front(
        tuple(
            dataclasses.replace(p, latency_ms={1: p.latency_at(1) * budget / 5.0, 32: 1e3})
            for p in (_point(x.subnet, x.accuracy, x.latency_at(1), x.model_bytes // 10) for x in FRONT.points)
        )
    )
    chosen = choose(front, policy)
    assert chosen is not None
    assert chosen.latency_at(policy.target.batch) <= budget
    assert chosen.model_bytes <= policy.budgets.model_bytes
    expected = {"accuracy-first": "big", "balanced": "mid", "battery-saver": "mid", "low-latency": "small"}
    assert chosen.subnet == expected[preset]


# -- the point and the file -----------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path: Path) -> None:
    front = FRONT.with_measurement("mid", accuracy=0.885, latency_ms={1: 2.2, 32: 41.0}, model_bytes=1_600_000)
    path = front.save(tmp_path / "fronts" / "front.json")
    assert [p.name for p in path.parent.iterdir()] == ["front.json"], "no temporary file may be left"
    data = json.loads(path.read_text())
    assert data["format_version"] == 1 and data["kind"] == "lifelong-front"
    assert data["points"][2]["measured_latency_ms"] == {"1": 2.2, "32": 41.0}
    assert Front.load(path) == front
    assert Front.load(path).sorted(1).points[0].subnet == "tiny"


def test_load_rejects_missing_corrupt_foreign_future_and_malformed_files(tmp_path: Path) -> None:
    path = FRONT.save(tmp_path / "front.json")
    with pytest.raises(DataError, match="no front at .*run a search first"):
        Front.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(DataError, match="bad.json is not a readable front"):
        Front.load(bad)
    data = json.loads(path.read_text())
    for change, error, match in [
        ({"kind": "other"}, DataError, "expected kind 'lifelong-front'"),
        ({"format_version": 2}, FormatVersionError, "format version 2; this version of lifelong reads version 1"),
        ({"points": [{"subnet": "x", "accuracy": 0.5}]}, DataError, "missing a field"),
        ({"points": [{**data["points"][0], "colour": 1}]}, DataError, r"unknown keys \['colour'\]"),
        ({"points": [{**data["points"][0], "accuracy": 91.0}]}, DataError, r"accuracy must be in \[0, 1\]"),
        ({"points": [data["points"][0], data["points"][0]]}, DataError, "repeated"),
        ({"points": [3]}, DataError, "every point must be a JSON object"),
    ]:
        bad.write_text(json.dumps({**data, **change}))
        with pytest.raises(error, match=match):
            Front.load(bad)


def test_point_validation_names_the_field() -> None:
    with pytest.raises(DataError, match="x: latency_ms must map batch sizes"):
        FrontPoint("x", 0.9, {"one": 1.0}, 10, 10)
    with pytest.raises(DataError, match="needs its predicted latency_ms"):
        FrontPoint("x", 0.9, None, 10, 10)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="model_bytes must be a byte count"):
        FrontPoint("x", 0.9, {1: 1.0}, -5, 10)
    with pytest.raises(KeyError):
        FRONT["nope"]


def test_from_arrays() -> None:
    front = Front.from_arrays(["a", "b"], [0.8, 0.9], {1: [1.0, 2.0], 32: [10.0, 30.0]}, [5, 6], [7, 8], info={"n": 2})
    assert front["b"].latency_at(32) == 30.0 and front["b"].peak_memory_bytes == 8 and front.info == {"n": 2}


# -- the plot -------------------------------------------------------------------------------------
def test_plot_front_writes_a_png_with_baselines(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib draws the front (a declared dependency)")
    front = FRONT.with_measurement("mid", accuracy=0.885, latency_ms={1: 2.2})
    baselines = {"MobileNetV2 (ort PTQ)": (3.0, 0.87), "small CNN (ort PTQ)": (1.0, 0.84)}
    path = plot_front(front, tmp_path / "plots" / "front.png", baselines=baselines, chosen="mid")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    empty = plot_front(Front(()), tmp_path / "empty.png", baselines=baselines)
    assert empty.read_bytes()[:4] == b"\x89PNG"
