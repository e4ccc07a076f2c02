"""The thread count as a per-model choice: timed on real sessions, written into the model's
metadata, and honoured by a runtime whose policy leaves the count to each model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tiny_models import write_classifier

from lifelong.deploy.onnx_graph import build_model
from lifelong.device.profile import random_net
from lifelong.device.threads import META_THREADS, choose_threads, threads_for, time_threads, write_thread_choice
from lifelong.space.config import SearchSpace
from policies import PolicyValidationError, Target
from service.serving.ort_runtime import OrtRuntime
from service.serving.runtime import AUTO_FALLBACK_THREADS, RuntimeSettings


def test_both_counts_are_timed_at_each_batch_and_the_faster_is_chosen() -> None:
    space = SearchSpace()
    model = build_model(
        random_net(space, space.parse("c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8"))
    ).SerializeToString()
    timed = time_threads(model, (1, 8), runs=10)
    assert set(timed) == {1, 8} and all(set(ms) == {1, 2} and min(ms.values()) > 0 for ms in timed.values())
    chosen = choose_threads(timed)
    for b, ms in timed.items():
        assert ms[chosen[b]] == min(ms.values())
    assert choose_threads({1: {1: 0.2, 2: 0.2}}) == {1: 1}, "a tie leaves a core free"


def test_the_choice_is_written_into_the_model_and_read_back_by_batch(tmp_path: Path) -> None:
    path = write_classifier(tmp_path / "m.onnx", favour_class=2, seed=0)
    before = ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    size = write_thread_choice(path, {1: 1, 32: 2})
    meta = ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    assert size == path.stat().st_size and json.loads(meta[META_THREADS]) == {"1": 1, "32": 2}
    assert {k: v for k, v in meta.items() if k != META_THREADS} == dict(before), "the rest of the metadata stays"
    assert [threads_for(meta, b) for b in (1, 4, 20, 64)] == [1, 1, 2, 2]  # the nearest timed batch
    for bad in ("", "not json", "[1, 2]", '{"1": "many"}', '{"1": 0}'):
        assert threads_for({META_THREADS: bad}, 1) is None, bad


@pytest.mark.parametrize(("threads", "batch", "want"), [(0, 1, 1), (0, 32, 2), (3, 1, 3)])
def test_a_runtime_left_to_choose_opens_each_model_with_its_count(tmp_path: Path, threads: int, batch: int, want: int) -> None:  # fmt: skip
    path = write_classifier(tmp_path / "m.onnx", favour_class=2, seed=0)
    write_thread_choice(path, {1: 1, 32: 2})
    plain = write_classifier(tmp_path / "plain.onnx", favour_class=2, seed=1)
    rt = OrtRuntime(RuntimeSettings(intra_op_threads=threads, batch=batch, warmup_runs=1))
    rt.swap("m", path)
    assert rt.stats().model_threads == want
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    assert rt.predict(x).classes.shape == (2,)
    rt.swap("plain", plain)  # no timed choice: the fallback, or the fixed count
    assert rt.stats().model_threads == (threads or AUTO_FALLBACK_THREADS)


def test_a_policy_may_leave_the_count_to_each_model_but_not_go_below_zero() -> None:
    assert Target(threads=0).fixed_threads == 2 and Target(threads=3).fixed_threads == 3
    with pytest.raises(PolicyValidationError, match="target.threads"):
        Target(threads=-1)
    with pytest.raises(ValueError, match="intra_op_threads=-1"):
        RuntimeSettings(intra_op_threads=-1)
