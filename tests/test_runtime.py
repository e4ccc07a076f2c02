"""The serving runtime: validation before serving, hot swap, draining, rollback, batching."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import onnxruntime as ort
import pytest
from tiny_models import BROKEN_KINDS, write_classifier, write_corrupt

from service.errors import InferenceError, ModelLoadError, NoModelError, RequestError
from service.serving.ort_runtime import OrtRuntime
from service.serving.runtime import MemoryRuntime, RuntimeSettings, as_model_input

rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("models")
    return {name: write_classifier(d / f"{name}.onnx", favour_class=k, seed=k) for name, k in (("a", 3), ("b", 7))}


@pytest.fixture
def runtime(models: dict) -> OrtRuntime:
    rt = OrtRuntime(RuntimeSettings(warmup_runs=1))
    rt.swap("a", models["a"])
    return rt


def _fn(favour: int, calls: list | None = None):
    def fn(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if calls is not None:
            calls.append(len(x))
        logits = np.zeros((len(x), 10), np.float32)
        logits[:, favour] = 5.0
        return logits, x.reshape(len(x), -1)[:, :8].copy()

    return fn


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="max_batch=0"):
        RuntimeSettings(max_batch=0)
    with pytest.raises(ValueError, match="warmup_runs=-1"):
        RuntimeSettings(warmup_runs=-1)


def test_session_options_cap_threads_and_stop_spinning() -> None:
    so = OrtRuntime(RuntimeSettings(intra_op_threads=3))._session_options()
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (3, 1)
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"


@pytest.mark.parametrize(
    "images",
    [
        rng.integers(0, 256, (28, 28), dtype=np.uint8),
        rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        rng.random((3, 1, 28, 28), dtype=np.float32),
        rng.random((2, 28, 28)),  # float64
        rng.integers(0, 256, (2, 28, 28)),  # int64 pixel values
    ],
    ids=["single", "uint8_batch", "float32_nchw", "float64", "int64"],
)
def test_predict_accepts_every_documented_form(runtime: OrtRuntime, images: np.ndarray) -> None:
    pred = runtime.predict(images)
    n = 1 if images.ndim == 2 else len(images)
    assert pred.model_id == "a"
    assert pred.classes.tolist() == [3] * n  # model a favours class 3
    assert pred.probabilities.shape == (n, 10) and pred.embedding.shape == (n, 16)
    np.testing.assert_allclose(pred.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert pred.latency_ms > 0


def test_uint8_and_float_pixels_mean_the_same(runtime: OrtRuntime) -> None:
    x = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    a, b = runtime.predict(x), runtime.predict(x.astype(np.float32) / 255)
    np.testing.assert_allclose(a.embedding, b.embedding, rtol=1e-6)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((3, 28)), r"input shape \(3, 28\)"),
        (np.zeros((2, 3, 28, 28)), r"input shape \(2, 3, 28, 28\)"),
        (np.zeros((0, 28, 28)), "N >= 1"),
        (np.full((28, 28), 1.5), r"float pixels span \[1.5, 1.5\]; expected \[0, 1\]"),
        (np.full((28, 28), np.nan), "NaN or infinite"),
        (np.full((28, 28), np.inf), "NaN or infinite"),
        (np.full((28, 28), 300), r"integer pixels span \[300, 300\]"),
        (np.full((28, 28), -1), "integer pixels"),
        (np.full((28, 28), "x"), "dtype <U1 is not supported"),
        (np.zeros((28, 28), bool), "dtype bool"),
        (np.zeros((28, 28), complex), "dtype complex128"),
    ],
)
def test_bad_inputs_name_what_is_wrong(images: np.ndarray, match: str) -> None:
    with pytest.raises(RequestError, match=match):
        as_model_input(images)


def test_nothing_serves_before_the_first_swap() -> None:
    rt = OrtRuntime()
    assert rt.current_id is None and rt.stats().model_id is None
    with pytest.raises(NoModelError, match="no model is deployed"):
        rt.predict(np.zeros((28, 28), np.uint8))


BROKEN = {
    "wrong_input_name": r"inputs are \['input'\]",
    "wrong_input_shape": r"shape \['N', 784\]",
    "wrong_input_dtype": r"tensor\(double\)",
    "fixed_batch": "batch dimension is fixed at 1",
    "missing_output": "output 'embedding' is missing",
    "nan": "logits holds 8 NaN/inf",
    "no_metadata": "metadata_props lack",
    "future_format": "model format '2'; this service reads format 1",
}
assert set(BROKEN) == set(BROKEN_KINDS)


@pytest.mark.parametrize("kind", [*BROKEN, "truncated", "garbage", "missing_file"])
def test_a_model_that_fails_to_load_leaves_the_old_one_serving(runtime: OrtRuntime, tmp_path, kind: str) -> None:
    path = tmp_path / f"{kind}.onnx"
    if kind in BROKEN:
        write_classifier(path, broken=kind)
    elif kind != "missing_file":
        write_corrupt(path, kind)
    match = {"truncated": "INVALID_PROTOBUF", "garbage": "INVALID_PROTOBUF", "missing_file": "no model file"}
    with pytest.raises(ModelLoadError, match=BROKEN.get(kind) or match[kind]):
        runtime.swap("new", path)
    stats = runtime.stats()
    assert (stats.model_id, stats.failed_swaps, stats.swaps) == ("a", 1, 1)
    assert runtime.predict(np.zeros((28, 28), np.uint8)).model_id == "a"


def test_parity_against_expected_outputs(runtime: OrtRuntime, models: dict) -> None:
    sample = rng.random((4, 1, 28, 28), dtype=np.float32)
    session = ort.InferenceSession(str(models["b"]), providers=["CPUExecutionProvider"])
    logits, embedding = session.run(["logits", "embedding"], {"image": sample})
    wrong = logits.copy()
    wrong[0, 0] += 0.5
    with pytest.raises(ModelLoadError, match=r"logits differs from the expected outputs by up to 0\.5"):
        runtime.swap("b", models["b"], sample, expected_outputs={"logits": wrong})
    assert runtime.current_id == "a"
    runtime.swap("b", models["b"], sample, expected_outputs={"logits": logits, "embedding": embedding})
    assert runtime.current_id == "b"


def test_idle_memory_release_shrinks_the_arena_and_leaves_serving_as_it_was(models: dict) -> None:
    rt = OrtRuntime(RuntimeSettings(warmup_runs=1))
    assert not rt.release_memory(), "nothing serves: nothing to release"
    rt.swap("a", models["a"])
    x = rng.random((32, 28, 28), dtype=np.float32)
    before = rt.predict(x)
    n = rt.stats().predictions
    assert rt.release_memory()
    after = rt.predict(x)
    assert np.array_equal(before.probabilities, after.probabilities) and after.model_id == "a"
    assert rt.stats().predictions == n + 1, "the release run is not a prediction"
    assert MemoryRuntime({"m": _fn(0)}).release_memory() is False  # no session: nothing to release


def test_rollback_returns_to_the_previous_model(runtime: OrtRuntime, models: dict) -> None:
    with pytest.raises(NoModelError, match="no previous model"):
        runtime.rollback()
    runtime.swap("b", models["b"])
    assert runtime.predict(np.zeros((28, 28), np.uint8)).classes.tolist() == [7]
    assert runtime.rollback() == "a"
    stats = runtime.stats()
    assert (stats.model_id, stats.previous_id, stats.swaps) == ("a", "b", 3)
    assert runtime.predict(np.zeros((28, 28), np.uint8)).classes.tolist() == [3]


def test_large_batches_run_in_chunks_on_one_model() -> None:
    calls: list[int] = []
    rt = MemoryRuntime({"m": _fn(2, calls)}, RuntimeSettings(max_batch=4, warmup_runs=0))
    rt.swap("m", None)
    calls.clear()
    pred = rt.predict(np.zeros((10, 28, 28), np.uint8))
    assert calls == [4, 4, 2]
    assert pred.classes.tolist() == [2] * 10 and pred.embedding.shape == (10, 8)


def test_in_flight_request_finishes_on_its_model_which_is_then_released() -> None:
    entered, release = threading.Event(), threading.Event()

    def blocking(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(x) == 5:  # the request under test, not validation's batches of 1 and 8
            entered.set()
            assert release.wait(10)
        return _fn(1)(x)

    rt = MemoryRuntime({"old": blocking, "new": _fn(6)}, RuntimeSettings(warmup_runs=0))
    rt.swap("old", "/models/old")
    result = {}
    t = threading.Thread(target=lambda: result.update(pred=rt.predict(np.zeros((5, 28, 28), np.uint8))))
    t.start()
    assert entered.wait(10)
    rt.swap("new", "/models/new")  # does not wait for the request in flight
    assert rt.predict(np.zeros((2, 28, 28), np.uint8)).classes.tolist() == [6, 6]
    during = rt.stats()
    assert (during.model_id, during.in_flight, during.draining, during.previous_id) == ("new", 1, 1, "old")
    release.set()
    t.join(10)
    assert result["pred"].model_id == "old" and result["pred"].classes.tolist() == [1] * 5
    after = rt.stats()
    assert (after.in_flight, after.draining) == (0, 0)  # the last reference went with the request


def test_memory_runtime_refuses_unknown_models_and_non_finite_outputs() -> None:
    rt = MemoryRuntime({"ok": _fn(0)})
    with pytest.raises(ModelLoadError, match=r"'nope' is not registered; known: \['ok'\]"):
        rt.swap("nope", None)

    def nan_for_white(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, emb = _fn(0)(x)
        logits[x.reshape(len(x), -1).min(axis=1) > 0.5] = np.nan  # finite on the probe's mixed images
        return logits, emb

    rt.add_model("odd", nan_for_white)
    with pytest.raises(ModelLoadError, match="NaN/inf"):  # the probe holds a white image
        rt.swap("odd", None)
    rt.swap("ok", None)
    assert rt.stats().failed_swaps == 2
    assert rt.predict(np.zeros((1, 28, 28), np.uint8)).model_id == "ok"


def test_non_finite_outputs_at_serving_time_raise_inference_error() -> None:
    def nan_on_batches_of_3(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, emb = _fn(0)(x)
        if len(x) == 3:
            logits[:] = np.inf
        return logits, emb

    rt = MemoryRuntime({"m": nan_on_batches_of_3}, RuntimeSettings(warmup_runs=0))
    rt.swap("m", None)
    with pytest.raises(InferenceError, match="model 'm' produced NaN or infinite outputs"):
        rt.predict(np.zeros((3, 28, 28), np.uint8))


def test_stats_count_predictions_and_latency(runtime: OrtRuntime) -> None:
    for n in (1, 2, 3):
        runtime.predict(np.zeros((n, 28, 28), np.uint8))
    stats = runtime.stats()
    assert (stats.predictions, stats.samples, stats.num_classes) == (3, 6, 10)
    assert 0 < stats.latency_p50_ms <= stats.latency_p95_ms
    assert stats.model_metadata["lifelong.subnet"] == "tiny_mlp"
    assert stats.as_dict()["model_id"] == "a"


def test_serving_modules_never_import_torch() -> None:
    code = "import service.serving.runtime, service.api.app, service.api.client, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
