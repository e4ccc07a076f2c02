"""The pure parts of the drift scenario benchmark (benchmarks/drift_stream.py): the shifts, the
class-prior resampling, the delay read from the time log, the recovered share, the targets, and
the streamer against a fake client. The scenarios themselves need the daemon and the trained
supernet; `benchmarks/drift.py --scenarios noise --quick` checks them."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_module():
    spec = importlib.util.spec_from_file_location("drift_stream", ROOT / "benchmarks" / "drift_stream.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


D = _load_module()


def _images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


# -- shifts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["clean", *D.SHIFTS])
def test_every_shift_keeps_dtype_and_shape_and_leaves_the_input_alone(name):
    x = _images()
    before = x.copy()
    out = D.shift_images(name, x, np.random.default_rng(1))
    assert out.dtype == np.uint8 and out.shape == x.shape
    np.testing.assert_array_equal(x, before)
    changed = not np.array_equal(out, x)
    assert changed == (name not in ("clean", "class-prior")), name


def test_noise_adds_gaussian_noise_of_the_stated_sigma():
    grey = np.full((50, 28, 28), 128, np.uint8)  # mid-grey: no clipping
    out = D.shift_images("noise", grey, np.random.default_rng(0)).astype(float)
    assert abs((out - 128).mean()) < 1.0
    assert (out - 128).std() == pytest.approx(D.NOISE_SIGMA * 255, rel=0.03)
    again = D.shift_images("noise", grey, np.random.default_rng(1))
    assert not np.array_equal(out, again)  # the noise is drawn, not fixed


def test_contrast_and_brightness_map_pixels_as_stated():
    x = np.array([[[0, 100, 255]]], np.uint8)
    assert D.shift_images("contrast", x, np.random.default_rng(0)).tolist() == [[[64, 114, 191]]]
    assert D.shift_images("brightness", x, np.random.default_rng(0)).tolist() == [[[51, 151, 255]]]


def _orientation_deg(img: np.ndarray) -> float:
    """Angle of the intensity's principal axis, counter-clockwise from the x axis, image y pointing down."""
    ys, xs = np.mgrid[: img.shape[0], : img.shape[1]]
    w = img.astype(float)
    cx, cy = (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()
    mu20, mu02 = (w * (xs - cx) ** 2).sum(), (w * (ys - cy) ** 2).sum()
    mu11 = (w * (xs - cx) * (ys - cy)).sum()
    return -math.degrees(0.5 * math.atan2(2 * mu11, mu20 - mu02))


def test_rotation_turns_the_image_by_the_stated_angle():
    bar = np.zeros((1, 28, 28), np.uint8)
    bar[0, 13:15, 4:24] = 255  # a horizontal bar through the centre
    out = D.shift_images("rotation", bar, np.random.default_rng(0))[0]
    assert _orientation_deg(bar[0]) == pytest.approx(0, abs=0.5)
    assert _orientation_deg(out) == pytest.approx(D.ROTATION_DEG, abs=1.5)


def test_shift_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown shift 'blur'"):
        D.shift_images("blur", _images(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="expected uint8"):
        D.shift_images("noise", _images().astype(np.float32), np.random.default_rng(0))


# -- class prior -----------------------------------------------------------------------------------
def test_class_prior_gives_the_stated_class_mix_from_the_pool():
    labels = np.repeat(np.arange(10), 100)  # 1000 images, balanced
    pool = np.arange(0, 1000, 2)  # half of them
    idx = D.class_prior_indices(labels, pool, 2000, np.random.default_rng(0), dominant=(0, 2, 4, 6), share=0.9)
    assert len(idx) == 2000 and set(idx.tolist()) <= set(pool.tolist())
    dom = np.isin(labels[idx], (0, 2, 4, 6))
    assert dom.sum() == 1800
    per_class = np.bincount(labels[idx], minlength=10)
    assert all(350 < per_class[c] < 550 for c in (0, 2, 4, 6)), per_class  # about 450 each
    assert per_class[[1, 3, 5, 7, 8, 9]].sum() == 200
    assert dom[:1000].sum() < 1000  # shuffled, not the dominant block first
    with pytest.raises(ValueError, match="share"):
        D.class_prior_indices(labels, pool, 10, np.random.default_rng(0), share=1.5)


def test_index_cycle_covers_the_pool_once_per_pass():
    cycle = D.IndexCycle(np.arange(10, 20), np.random.default_rng(0))
    first = cycle.take(7)
    second = cycle.take(3)
    assert sorted(np.concatenate([first, second]).tolist()) == list(range(10, 20))
    assert len(cycle.take(25)) == 25


# -- delay, recovery, targets --------------------------------------------------------------------
LOG = [(0.0, 0), (10.0, 8), (11.0, 16), (12.0, 24), (13.0, 32)]


def test_delay_maps_the_event_time_to_the_samples_answered_by_then():
    assert D.samples_at(LOG, 11.5) == 16
    assert D.samples_at(LOG, 11.0) == 16  # answered at that instant counts
    assert D.samples_at(LOG, 99.0) == 32
    assert D.samples_at(LOG, -1.0) == 0
    assert D.detection_delay(LOG, 8, 12.9) == 16
    assert D.detection_delay(LOG, 8, None) is None


def test_recovered_fraction():
    assert D.recovered_fraction(0.87, 0.25, 0.56) == pytest.approx(0.5)
    assert D.recovered_fraction(0.87, 0.25, 0.87) == pytest.approx(1.0)
    assert D.recovered_fraction(0.87, 0.25, 0.20) < 0  # worse than before: negative, not clipped
    assert D.recovered_fraction(0.87, 0.865, 0.9) is None  # lost less than a point: nothing to recover
    assert D.recovered_fraction(0.87, 0.25, None) is None


def _shift_result(delay, recovered, swap_s, drop, lost=0.3, errors=0):
    return {
        "detection": {"delay_samples": delay},
        "accuracy": {"lost": lost, "recovered_fraction": recovered},
        "adaptation": {"detection_to_swap_s": swap_s},
        "forgetting": {"clean_drop_pt": drop},
        "request_errors": errors,
    }


def test_targets_met_and_missed():
    results = {
        "noise": _shift_result(300, 0.85, 20.0, 0.4),
        "rotation": _shift_result(None, None, None, None),  # never detected, never swapped
        "class-prior": _shift_result(450, None, 90.0, 0.2, lost=0.002),  # nothing lost: no recovery target
        "none": {"samples": 20000, "false_alarms": 0, "request_errors": 0},
    }
    t = {x["name"]: x for x in D.build_targets(results)}
    assert all(v["met"] for k, v in t.items() if k.startswith("noise")), t
    results["noise"]["accuracy"]["recovered_fraction"] = 0.6  # enough without labels, not with them
    t = {x["name"]: x for x in D.build_targets(results)}
    assert not t["noise: share of the lost accuracy recovered"]["met"]
    assert {x["name"]: x for x in D.build_targets(results, labelled=False)}[
        "noise: share of the lost accuracy recovered"
    ]["met"]
    results["noise"]["accuracy"]["recovered_fraction"] = 0.85
    assert not any(v["met"] for k, v in t.items() if k.startswith("rotation"))
    assert not any("class-prior: share" in k for k in t)
    assert t["false alarms (drift episodes) in 20000 clean samples"]["met"]
    assert t["request errors, all scenarios"] == {
        "name": "request errors, all scenarios",
        "value": 0,
        "target": "0",
        "met": True,
    }
    results["none"]["false_alarms"] = 1
    results["noise"]["request_errors"] = 2
    t = {x["name"]: x for x in D.build_targets(results)}
    assert not t["false alarms (drift episodes) in 20000 clean samples"]["met"]
    assert t["request errors, all scenarios"]["value"] == 2 and not t["request errors, all scenarios"]["met"]
    assert not any("since replaced" in k for k in t)  # one answer: one forgetting figure
    results["noise"]["forgetting"] |= {"first_answer_clean_drop_pt": 40.0}  # the label-free answer, replaced
    t = {x["name"]: x for x in D.build_targets(results)}
    assert t["noise: clean test accuracy drop after adaptation (pt)"]["met"]
    assert not t["noise: clean test accuracy drop of the first answer, since replaced (pt)"]["met"]
    t = {x["name"]: x for x in D.build_targets({"noise": {"error": "the daemon exited", "request_errors": 0}})}
    assert not t["request errors, all scenarios"]["met"]  # a scenario that failed is not "no errors"


def test_targets_of_the_labelled_answer_and_the_return_to_clean_data():
    base = {"detection": {"delay_samples": 300}, "adaptation": {"detection_to_swap_s": 20.0},
            "accuracy": {"lost": 0.3, "recovered_fraction": 0.9}, "forgetting": {"clean_drop_pt": 0.2}}  # fmt: skip
    results = {"noise": base | {"labelled": {"detection_to_labelled_s": 95.0}, "return": {"clean_gap_pt_at_500": 0.0}}}
    t = {x["name"]: x for x in D.build_targets(results)}
    assert t["noise: detection to the labelled answer (s)"]["met"]
    assert t["noise: data back to clean: clean accuracy gap to the original 500 samples in (pt)"]["met"]
    results["noise"]["labelled"]["detection_to_labelled_s"] = None  # timed out: a miss, not a pass
    results["noise"]["return"]["clean_gap_pt_at_500"] = 41.0  # the adapted model still served
    t = {x["name"]: x for x in D.build_targets(results)}
    assert not t["noise: detection to the labelled answer (s)"]["met"]
    assert not t["noise: data back to clean: clean accuracy gap to the original 500 samples in (pt)"]["met"]
    without = {x["name"] for x in D.build_targets(results, labelled=False)}
    assert "noise: detection to the labelled answer (s)" not in without, "no labels: no labelled answer to time"


# -- the streamer, against a fake client -----------------------------------------------------------
class FakeClient:
    """Answers class 0 from model "a" for the first 16 samples, then from "b"; fails the 3rd request."""

    def __init__(self) -> None:
        self.requests, self.labels = 0, []

    def predict(self, x):
        self.requests += 1
        if self.requests == 3:
            raise ConnectionResetError("boom")
        model = "a" if self.requests <= 2 else "b"
        return SimpleNamespace(model=model, request_id=f"r{self.requests}", classes=np.zeros(len(x), np.int64),
                               latency_ms=0.1)  # fmt: skip

    def feedback(self, *, labels):
        self.labels += list(labels)
        return len(labels)


def test_streamer_records_answers_errors_and_feedback():
    rec, client = D.Record(), FakeClient()
    streamer = D.Streamer(client, rec, rate=1e6, batch=8, fraction=0.5, rng=np.random.default_rng(0))
    y = np.arange(32) % 2  # half are class 0: the fake model is right on those

    def source(n, pos=[0]):  # noqa: B006 - a counter shared between calls
        out = (np.zeros((n, 28, 28), np.uint8), y[pos[0] : pos[0] + n])
        pos[0] += n
        return out

    assert streamer.run(source, "clean", samples=16) == 16
    assert streamer.run(source, "post", samples=8) == 8
    assert len(rec.errors) == 1 and "predict: ConnectionResetError: boom" in rec.errors[0]
    assert rec.answered == 24 and rec.log[-1][1] == 24 and [n for _, n in rec.log] == [0, 8, 16, 24]
    assert rec.models == ["a", "b"]
    assert rec.accuracy("clean") == (0.5, 16)
    assert rec.accuracy("post", "b") == (pytest.approx(np.mean(y[24:32] == 0)), 8)
    assert rec.accuracy("post", "a") == (None, 0)
    assert rec.feedback_sent == len(client.labels) > 0
    for rid, index, label in client.labels:
        assert rid.startswith("r") and 0 <= index < 8 and label in (0, 1)


def test_the_labelled_answer_is_read_from_the_daemons_events_not_the_label_free_one():
    events = [
        {"at": 5.0, "kind": "adapt", "message": "adaptation swapped: earlier episode"},  # before the detection
        {"at": 20.0, "kind": "adapt", "message": "adaptation swapped: label-free: BN statistics re-estimated"},
        {"at": 30.0, "kind": "drift", "message": "adaptation kept: not an adapt event"},
        {"at": 110.0, "kind": "adapt", "message": "adaptation kept: candidate 80% vs 81% serving"},
    ]
    got = D.labelled_answer(events, t_detect=10.0)
    assert got["outcome"] == "kept" and got["detection_to_labelled_s"] == 100.0
    assert D.labelled_answer(events[:3], t_detect=10.0)["outcome"] is None
    named = {"at": 90.0, "kind": "adapt",
             "message": "adaptation swapped: candidate 75% vs 73% serving; original data -0.75 pt (the label-free answer serving lost 19 pt there)"}  # fmt: skip
    got = D.labelled_answer([*events[:3], named], t_detect=10.0)
    assert got["outcome"] == "swapped" and got["detection_to_labelled_s"] == 80.0, (
        "naming the first answer is not being it"
    )
