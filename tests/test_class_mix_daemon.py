"""A change of class mix, answered by the real daemon without a single label.

A real (linear) Fashion-MNIST classifier serves; a client streams unshifted test images, then
images drawn 40% from one class and 30% from another. The daemon's drift check judges the drift a change of
class mix, estimates the new mix from the served probabilities and corrects the logits: the
accuracy on the skewed stream rises, no adaptation waits for labels, and when the stream goes
back to the training mix the correction is removed.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from daemon_harness import DaemonProcess, commit_model, remove, short_dir, wait_until
from tiny_models import write_linear_fashion

from lifelong.deploy.model_format import INPUT_NAME


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory: pytest.TempPathFactory, fashion_train):
    path = tmp_path_factory.mktemp("class-mix") / "linear.onnx"
    return write_linear_fashion(path, fashion_train.x[:20_000], fashion_train.y[:20_000])


def _draw(fashion_test, priors: np.ndarray, n: int, seed: int, pool: slice) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = np.arange(len(fashion_test.y))[pool]
    y = fashion_test.y[idx]
    counts = rng.multinomial(n, priors)
    chosen = np.concatenate([rng.choice(idx[y == c], k) for c, k in enumerate(counts)])
    rng.shuffle(chosen)
    return fashion_test.x[chosen], fashion_test.y[chosen]


def test_a_class_mix_shift_is_corrected_without_labels_and_undone_when_the_mix_returns(
    linear_model, fashion_test
) -> None:
    run = short_dir("llcm")
    state = run / "state"
    uniform = np.full(10, 0.1)
    skew = np.array([0.4, 0.3] + [0.3 / 8] * 8)
    try:
        model = commit_model(state, linear_model)
        (state / "policy.toml").write_text(
            'format_version = 1\nname = "class-mix"\n[objective]\nkind = "max-accuracy"\n'
            "[drift]\nwindow = 300\nreference_window = 600\nfalse_alarm_samples = 200_000\ncheck_interval_s = 0.2\n"
        )
        with DaemonProcess(state, run).start() as d, d.client() as c:

            def stream(images: np.ndarray) -> np.ndarray:
                return np.concatenate([c.predict(images[i : i + 20]).classes for i in range(0, len(images), 20)])

            stream(_draw(fashion_test, uniform, 1200, seed=1, pool=slice(0, 5000))[0])
            wait_until(lambda: c.status()["drift"]["counts"]["label"]["checks"] >= 2, timeout=30, what="label checks")
            assert c.status()["drift"]["counts"]["label"]["drifted"] == 0
            x, _ = _draw(fashion_test, skew, 600, seed=2, pool=slice(5000, None))
            stream(x)
            # the correction (drift thread) and its event (the daemon's loop) land a moment apart
            wait_until(
                lambda: (
                    c.status()["drift"]["class_mix"]["in_force"]
                    and any("answered without labels" in e["message"] for e in c.status()["events"])
                ),
                timeout=30,
                what="the class-mix correction and its event",
            )
            status = c.status()
            mix = status["drift"]["class_mix"]
            assert mix["priors"][0] > 0.3 and mix["priors"][1] > 0.22, mix
            assert any("answered without labels: class mix changed" in e["message"] for e in status["events"]), status["events"]  # fmt: skip
            assert not any(n["kind"] in ("data", "label") and n["action"] == "adapt" for n in status["drift"]["needs"])
            assert status["adaptation"].get("pending") is None, "nothing waits for labels"
            # the served answers now carry the correction: better than the same model uncorrected
            x2, y2 = _draw(fashion_test, skew, 1000, seed=3, pool=slice(5000, None))
            corrected = stream(x2)
            session = ort.InferenceSession(str(linear_model), providers=["CPUExecutionProvider"])
            plain = session.run(["logits"], {INPUT_NAME: x2[:, None].astype(np.float32) / 255})[0].argmax(1)
            assert (corrected == y2).mean() >= (plain == y2).mean() + 0.01, (
                (corrected == y2).mean(),
                (plain == y2).mean(),
            )
            # back to the training mix: the correction goes
            stream(_draw(fashion_test, uniform, 900, seed=4, pool=slice(0, 5000))[0])
            try:
                wait_until(
                    lambda: not c.status()["drift"]["class_mix"]["in_force"], timeout=30, what="the correction removed"
                )
            except AssertionError:
                print("drift status:", c.status()["drift"], "\ndaemon log:", d.log_path.read_text()[-5000:])
                raise
            status = c.status()
            assert "back to training" in status["drift"]["class_mix"]["removed_because"]
            assert status["runtime"]["model_id"] == model, "no swap: the same model served throughout"
    finally:
        remove(run)
