"""The status's profile part: its age, whether it fits this device, and how its latency model
did on the model serving, from a real profile file."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from search_helpers import SPACE, structured_profile

from lifelong.device.profile import device_fingerprint
from service.daemon.documents import _profile_line
from service.daemon.profile_status import ProfileStatus


def test_a_missing_profile_says_how_to_take_one(tmp_path: Path) -> None:
    doc = ProfileStatus(tmp_path / "device.json").status(subnet=None, batch=1, threads=2, live_p50_ms=None)
    assert doc == {"present": False, "path": str(tmp_path / "device.json")}
    assert "`lifelong profile` measures this device" in _profile_line(doc, time.time())


def test_a_corrupt_profile_is_named_with_its_error(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    path.write_text("{ not json")
    doc = ProfileStatus(path).status(subnet=None, batch=1, threads=2, live_p50_ms=None)
    assert doc["present"] is False and str(path) in doc["error"]


def test_the_serving_model_is_predicted_and_compared_with_the_probe(tmp_path: Path) -> None:
    prof = structured_profile()
    prof.created = time.time() - 7200
    path = prof.save(tmp_path / "device.json")
    subnet = str(SPACE.sample(np.random.default_rng(3)))
    status = ProfileStatus(path, SPACE)
    doc = status.status(subnet=subnet, batch=1, threads=2, live_p50_ms=0.5)
    want = prof.predict(SPACE, SPACE.parse(subnet), 1)
    assert doc["predicted_ms"] == pytest.approx(want)
    assert doc["prediction_error"] == pytest.approx(want / 0.5 - 1)
    assert 7100 < doc["age_s"] < 7300
    assert doc["stale"] and any(r.startswith("cpu: profiled 'test'") for r in doc["stale"])
    line = _profile_line(doc, time.time())
    assert line.startswith("profile:  taken 2.0 h ago, TAKEN ELSEWHERE") and "the probe measures 0.50 ms p50" in line
    assert "the profile timed" not in line, "no serving thread count given"
    prof_threads = doc["threads"]
    other = _profile_line(doc, time.time(), serving_threads=prof_threads + 1)
    assert other.endswith(f"; the profile timed {prof_threads} threads, the model serves on {prof_threads + 1}")
    # a batch the profile did not measure, or a name of another space: no prediction, no crash
    assert "predicted_ms" not in status.status(subnet=subnet, batch=7, threads=2, live_p50_ms=0.5)
    assert "predicted_ms" not in status.status(subnet="tiny_mlp", batch=1, threads=2, live_p50_ms=0.5)
    # a profile taken here with these threads fits; a new file is read again
    prof.fingerprint = device_fingerprint(2)
    prof.save(path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    doc = status.status(subnet=subnet, batch=1, threads=2, live_p50_ms=None)
    assert doc["stale"] == [] and "prediction_error" not in doc
    assert ", fits this device; predicts" in _profile_line(doc, time.time())
