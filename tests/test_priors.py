"""Class-mix shift on real Fashion-MNIST: a softmax regression (numpy) on the training set, a test
set resampled to a skewed class mix, EM on the model's calibrated outputs."""

from __future__ import annotations

import numpy as np
import pytest

from lifelong.drift.priors import adjust_logits, class_mix_test, em_priors, fit_bcts, softmax


def _features(x: np.ndarray) -> np.ndarray:
    """7 x 7 means of the 28 x 28 images, plus a constant: a small, fast, real model's input."""
    f = x.reshape(len(x), 7, 4, 7, 4).mean(axis=(2, 4)).reshape(len(x), 49)
    return np.hstack([f, np.ones((len(x), 1), np.float32)])


@pytest.fixture(scope="module")
def model(fashion_train):
    x = _features(fashion_train.as_float()[:20_000, 0])
    y = fashion_train.y[:20_000]
    w = np.zeros((x.shape[1], 10))
    onehot = np.eye(10)[y]
    for _ in range(300):  # full-batch gradient descent on the cross-entropy
        w -= 2.0 * x.T @ (softmax(x @ w) - onehot) / len(x)
    return w


def _shifted(fashion_test, priors: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = fashion_test.y
    counts = rng.multinomial(n, priors)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=True) for c, k in enumerate(counts)])
    return fashion_test.as_float()[idx, 0], y[idx]


def test_em_recovers_a_skewed_class_mix_and_the_adjustment_repairs_accuracy(model, fashion_test) -> None:
    uniform = np.full(10, 0.1)
    # calibrate on a held-out, unshifted half of the test set; measure on the other half
    half = len(fashion_test.y) // 2
    x_cal = _features(fashion_test.as_float()[:half, 0])
    cal = fit_bcts(x_cal @ model, fashion_test.y[:half])
    assert cal.nll_after <= cal.nll_before
    skew = np.array([0.4, 0.3] + [0.3 / 8] * 8)
    x, y = _shifted(fashion_test.head(len(fashion_test.y)), skew, 3000, seed=1)
    logits = cal.apply(_features(x) @ model)
    est = em_priors(softmax(logits), uniform)
    assert est.converged
    assert np.abs(est.priors - skew).max() < 0.05, est.priors.round(3)
    assert est.shift == pytest.approx(0.5 * np.abs(skew - uniform).sum(), abs=0.05)
    before = (logits.argmax(1) == y).mean()
    after = (adjust_logits(logits, uniform, est.priors).argmax(1) == y).mean()
    assert after >= before + 0.02, (before, after)
    # the same mix as training: a shift of sampling noise, far below the skew's 0.35
    x0, _ = _shifted(fashion_test, uniform, 3000, seed=2)
    same = em_priors(softmax(cal.apply(_features(x0) @ model)), uniform)
    assert same.shift < 0.1


def test_bcts_undoes_a_known_temperature_and_bias() -> None:
    rng = np.random.default_rng(0)
    true = rng.normal(size=(4000, 5)) * 2
    labels = np.array([rng.choice(5, p=p) for p in softmax(true)])
    bias = np.array([1.0, -0.5, 0.0, 0.3, -0.8])
    distorted = 3.0 * (true - bias)  # over-confident and biased
    cal = fit_bcts(distorted, labels)
    assert cal.temperature == pytest.approx(3.0, rel=0.1)
    assert cal.bias == pytest.approx(bias - bias.mean(), abs=0.15)
    assert cal.nll_after < cal.nll_before


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"expected probabilities \(N, 3\)"):
        em_priors(np.ones((4, 2)) / 2, np.full(3, 1 / 3))
    with pytest.raises(ValueError, match="training priors must be positive and sum to 1"):
        em_priors(np.ones((4, 2)) / 2, np.array([0.9, 0.9]))
    with pytest.raises(ValueError, match=r"labels must be in 0..1"):
        fit_bcts(np.zeros((3, 2)), np.array([0, 1, 2]))


def test_the_class_mix_test_tells_a_new_mix_from_new_looking_data(model, fashion_test) -> None:
    """Reference: 2,000 unshifted test images; live windows of 500. A skewed mix moves the raw
    embeddings (the data drift test's view) but not the re-weighted ones; noise and brightness
    move both."""
    x_all = fashion_test.as_float()[:, 0]
    rng = np.random.default_rng(3)
    ref_x = x_all[rng.choice(5000, 2000, replace=False)]
    ref_emb = _features(ref_x)[:, :49]
    ref_cls = (_features(ref_x) @ model).argmax(1)

    def test(x: np.ndarray):
        f = _features(x)
        return class_mix_test(ref_emb, ref_cls, f[:, :49], (f @ model).argmax(1), 10)

    skew = np.full(10, 0.1 / 6)
    skew[[0, 2, 4, 6]] = 0.9 / 4
    mix = test(_shifted(fashion_test, skew, 500, seed=4)[0])
    assert mix.unweighted_p < 1e-6 and mix.explains(), (mix.unweighted_p, mix.p_value)
    assert mix.live_mix[[0, 2, 4, 6]].sum() > 0.7
    clean = _shifted(fashion_test, np.full(10, 0.1), 500, seed=5)[0]
    noisy = np.clip(clean + np.random.default_rng(6).normal(0, 0.2, clean.shape), 0, 1).astype(np.float32)
    brighter = np.clip(clean + 0.2, 0, 1)
    for shifted in (noisy, brighter):
        got = test(shifted)
        assert got.unweighted_p < 1e-6 and not got.explains(), (got.unweighted_p, got.p_value)
    assert test(clean).explains()
    with pytest.raises(ValueError, match=r"live classes must be in 0..9"):
        class_mix_test(ref_emb, ref_cls, ref_emb[:5], np.array([0, 1, 2, 3, 10]), 10)
