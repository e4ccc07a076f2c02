"""Benchmark: the drift detectors alone (no daemon) on real Fashion-MNIST streams.

    .venv/bin/python benchmarks/drift_detectors.py                      # ~1-2 min of CPU
    .venv/bin/python benchmarks/drift_detectors.py --features supernet  # the trained supernet (torch, ~3 min)

Writes ``benchmarks/results/drift_detectors.json`` (``drift_detectors-supernet.json``;
``-arlN`` appended with ``--false-alarm-samples N``).

Embeddings (``--features``):

- ``proj`` (default): a fixed random projection of the pixels to 64 dimensions; predictions
  by the nearest class centroid of the reference embeddings. Deterministic, fast, no model.
- ``supernet``: the trained supernet's largest subnet (BN re-calibrated on 2000 training
  images): its 128-dim penultimate embeddings and its predictions. Needs torch and the
  checkpoint (``--checkpoint``, default the service's state directory).

Streams, per seed (the seed draws the images): a reference of 2000 training images; a clean
stream of 20,000 other training images; and per shift 2000 clean test images followed by
shifted test images (gaussian noise sigma 0.2, contrast x*0.5+0.25, brightness +0.2, a
15-degree rotation, a class-prior shift keeping classes 0-4). Each goes through a
:class:`~lifelong.drift.monitor.DriftMonitor` with the default drift settings (window 500,
reference 2000, one false alarm per 20,000 samples for the monitor as a whole, accuracy
drop 0.05, checks every 100 samples; ``--false-alarm-samples`` changes the ARL): embeddings to the data test, predictions to the label test, and a feedback bit
for every sample (prediction == label) to the accuracy test. Reported per shift and
detector: the detection delay in samples after the shift starts, and alarms before it;
per detector: false alarms over the 20,000 clean samples.

Also measured: power and cost of the two data tests (KS + Simes, the default, against MMD
with a permutation test) on windows of 500 holding 50, 100 or 200 shifted samples, and
ADWIN alone on Bernoulli error streams (a jump from 0.1 to 0.3, and stationary 0.1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import markdown_targets, target, write_results  # noqa: E402

from lifelong.data.datasets import load_fashion_mnist  # noqa: E402
from lifelong.drift.adwin import Adwin  # noqa: E402
from lifelong.drift.detectors import EmbeddingDrift  # noqa: E402
from lifelong.drift.monitor import SHARED_DETECTORS, DriftMonitor  # noqa: E402
from policies import DriftSettings  # noqa: E402

REFERENCE, CLEAN, BEFORE, SHIFTED = 2000, 20_000, 2000, 4000
DETECTORS = ("data", "label", "accuracy")
SHIFTS = ("noise", "contrast", "brightness", "rotation", "class-prior")


def shift_images(name: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``uint8 (N, 28, 28)`` images -> float ``[0, 1]`` images under the shift ``name``."""
    f = x / 255.0
    if name == "noise":
        return np.clip(f + rng.normal(0.0, 0.2, f.shape), 0, 1)
    if name == "contrast":
        return f * 0.5 + 0.25
    if name == "brightness":
        return np.clip(f + 0.2, 0, 1)
    if name == "rotation":
        return np.stack([np.asarray(Image.fromarray(i).rotate(15, resample=Image.BILINEAR)) for i in x]) / 255.0
    if name in ("clean", "class-prior"):
        return f
    raise ValueError(f"unknown shift {name!r}")


class ProjectionFeatures:
    """64-dim random projection of the pixels; nearest-centroid predictions."""

    name = "proj"

    def __init__(self) -> None:
        self.proj = np.random.default_rng(1234).normal(size=(784, 64)) / 28.0
        self.centroids: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        emb = self.embed(x)
        self.centroids = np.stack([emb[y == c].mean(axis=0) for c in range(10)])

    def embed(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) @ self.proj  # (N, 64)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb = self.embed(x)
        assert self.centroids is not None, "fit first"
        d = (emb**2).sum(1)[:, None] - 2 * emb @ self.centroids.T + (self.centroids**2).sum(1)[None]
        return emb, d.argmin(axis=1)


class SupernetFeatures:
    """Penultimate embeddings and predictions of the supernet's largest subnet."""

    name = "supernet"

    def __init__(self, checkpoint: Path) -> None:
        import torch

        from lifelong.nn.checkpoint import load_checkpoint

        torch.set_num_threads(1)
        self.torch = torch
        self.net = load_checkpoint(checkpoint).build().eval()
        self.net.set_active_subnet(self.net.space.largest())

    def fit(self, x: np.ndarray, y: np.ndarray) -> None:
        from lifelong.nn.supernet import recalibrate_bn

        recalibrate_bn(self.net, x[:, None].astype(np.float32))
        self.net.eval()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embs, preds = [], []
        with self.torch.no_grad():
            for i in range(0, len(x), 500):
                logits, emb = self.net.forward_with_embedding(
                    self.torch.from_numpy(x[i : i + 500, None].astype(np.float32))
                )
                embs.append(emb.numpy().astype(np.float64))
                preds.append(logits.argmax(1).numpy())
        return np.concatenate(embs), np.concatenate(preds)


def run_monitor(monitor: DriftMonitor, emb: np.ndarray, pred: np.ndarray, y: np.ndarray, start: int) -> dict[str, Any]:
    """Stream through the monitor in batches of 50; first alarm per detector, relative to ``start``."""
    first: dict[str, int | None] = dict.fromkeys(DETECTORS)
    early: dict[str, int] = dict.fromkeys(DETECTORS, 0)
    alarms: dict[str, int] = dict.fromkeys(DETECTORS, 0)
    for i in range(0, len(emb), 50):
        sl = slice(i, i + 50)
        for d in monitor.observe(embeddings=emb[sl], predictions=pred[sl], correct=pred[sl] == y[sl]):
            if not d.drifted:
                continue
            alarms[d.kind] += 1
            at = d.detail["sample"] - start
            if at <= 0:
                early[d.kind] += 1
            elif first[d.kind] is None:
                first[d.kind] = at
    return {"delay": first, "alarms_before_shift": early, "alarms": alarms}


def stream_seed(feats: Any, train: Any, test: Any, seed: int, settings: DriftSettings) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train.x))
    ref_i, clean_i = order[:REFERENCE], order[REFERENCE : REFERENCE + CLEAN]
    feats.fit(train.x[ref_i] / 255.0, train.y[ref_i])
    ref_emb, ref_pred = feats(train.x[ref_i] / 255.0)

    def monitor() -> DriftMonitor:
        return DriftMonitor(
            settings, num_classes=10, embedding_reference=ref_emb, prediction_reference=ref_pred, seed=seed
        )

    out: dict[str, Any] = {"seed": seed, "reference_accuracy": float((ref_pred == train.y[ref_i]).mean())}
    emb, pred = feats(train.x[clean_i] / 255.0)
    clean = run_monitor(monitor(), emb, pred, train.y[clean_i], start=0)
    out["clean"] = {"false_alarms": clean["alarms"], "accuracy": float((pred == train.y[clean_i]).mean())}
    t_order = rng.permutation(len(test.x))
    before_i, pool = t_order[:BEFORE], t_order[BEFORE:]
    b_emb, b_pred = feats(test.x[before_i] / 255.0)
    out["shifts"] = {}
    for name in SHIFTS:
        idx = pool[test.y[pool] < 5][:SHIFTED] if name == "class-prior" else pool[:SHIFTED]
        s_emb, s_pred = feats(shift_images(name, test.x[idx], rng))
        res = run_monitor(
            monitor(),
            np.concatenate([b_emb, s_emb]),
            np.concatenate([b_pred, s_pred]),
            np.concatenate([test.y[before_i], test.y[idx]]),
            start=BEFORE,
        )
        res["accuracy_before"] = float((b_pred == test.y[before_i]).mean())
        res["accuracy_shifted"] = float((s_pred == test.y[idx]).mean())
        out["shifts"][name] = res
    return out


def method_comparison(feats: Any, train: Any, test: Any, draws: int) -> dict[str, Any]:
    """Power (detection rate at alpha 0.005) and cost of KS + Simes and MMD on one core."""
    rng = np.random.default_rng(99)
    order = rng.permutation(len(train.x))
    ref, _ = feats(train.x[order[:REFERENCE]] / 255.0)
    clean, _ = feats(train.x[order[REFERENCE : REFERENCE + 5000]] / 255.0)
    src = test.x[:2000]
    shifted = {n: feats(shift_images(n, src, rng))[0] for n in SHIFTS if n != "class-prior"}
    shifted["class-prior"] = feats(test.x[np.flatnonzero(test.y < 5)[:2000]] / 255.0)[0]
    out: dict[str, Any] = {}
    with threadpool_limits(1):
        for method in ("ks", "mmd"):
            det = EmbeddingDrift(ref, window=500, check_every=100, arl=20_000, method=method, seed=0)
            det.update(clean[:500])
            t = []
            for _ in range(3):
                t0 = time.perf_counter()
                det.check()
                t.append(time.perf_counter() - t0)
            power: dict[str, dict[str, float]] = {}
            for name, sx in shifted.items():
                power[name] = {}
                for k in (50, 100, 200):
                    hits = 0
                    for r in range(draws):
                        g = np.random.default_rng(1000 + r)
                        win = np.concatenate(
                            [
                                clean[g.choice(len(clean), 500 - k, replace=False)],
                                sx[g.choice(len(sx), k, replace=False)],
                            ]
                        )
                        hits += bool(det.update(win).drifted)  # a full window: checked at once
                    power[name][str(k)] = hits / draws
            null_hits = 0
            for r in range(draws):
                win = clean[np.random.default_rng(5000 + r).choice(len(clean), 500, replace=False)]
                null_hits += bool(det.update(win).drifted)
            out[method] = {
                "check_seconds_one_core": min(t),
                "detection_rate": power,
                "clean_alarm_rate": null_hits / draws,
            }
            print(f"{method}: {min(t) * 1000:.1f} ms a check; power {power}", flush=True)
    out["draws"] = draws
    out["note"] = "windows of 500 with k shifted samples; alpha 0.005 (check every 100, ARL 20,000)"
    return out


def adwin_streams(seeds: int) -> dict[str, Any]:
    delays, false_cuts = [], 0
    for seed in range(seeds):
        g = np.random.default_rng(seed)
        a = Adwin(32 / 20_000)
        a.update(g.random(5000) < 0.1)
        cuts = a.update(g.random(3000) < 0.3)
        delays.append(cuts[0][0] + 1 if cuts else None)
        false_cuts += len(Adwin(32 / 20_000).update(g.random(20_000) < 0.1))
    found = [d for d in delays if d is not None]
    return {
        "jump_0.1_to_0.3_delays": delays,
        "median_delay": statistics.median(found) if found else None,
        "max_delay": max(found) if len(found) == len(delays) else None,
        "false_cuts_stationary_0.1": false_cuts,
        "stationary_bits": 20_000 * seeds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", choices=("proj", "supernet"), default="proj")
    ap.add_argument("--checkpoint", type=Path, default=None, help="[STATE/supernet/supernet.pt]")
    ap.add_argument("--seeds", type=int, default=None, help="stream seeds [5 for proj, 1 for supernet]")
    ap.add_argument("--draws", type=int, default=10, help="windows per point of the power comparison")
    ap.add_argument("--false-alarm-samples", type=int, default=None, help="the policy's ARL [20000, the default]")
    args = ap.parse_args()
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    if args.features == "supernet":
        from service.state.paths import default_checkpoint, resolve_state_dir

        feats: Any = SupernetFeatures(args.checkpoint or default_checkpoint(resolve_state_dir(None)))
    else:
        feats = ProjectionFeatures()
    seeds = args.seeds or (5 if args.features == "proj" else 1)
    settings = (
        DriftSettings()
        if args.false_alarm_samples is None
        else DriftSettings(false_alarm_samples=args.false_alarm_samples)
    )
    cpu0, wall0 = time.process_time(), time.monotonic()

    runs = []
    for seed in range(seeds):
        runs.append(stream_seed(feats, train, test, seed, settings))
        print(
            f"seed {seed}: {runs[-1]['clean']} " + str({k: v["delay"] for k, v in runs[-1]["shifts"].items()}),
            flush=True,
        )
    comparison = method_comparison(feats, train, test, args.draws)
    adwin = adwin_streams(20)

    summary: dict[str, Any] = {"shifts": {}, "false_alarms_20k_clean": {}}
    targets = []
    for name in SHIFTS:
        row = {}
        for det in DETECTORS:
            delays = [r["shifts"][name]["delay"][det] for r in runs]
            found = [d for d in delays if d is not None]
            row[det] = {
                "delays": delays,
                "median": statistics.median(found) if found else None,
                "max": max(found) if len(found) == len(delays) else None,
                "alarms_before_shift": sum(r["shifts"][name]["alarms_before_shift"][det] for r in runs),
            }
        row["first_detector_max_delay"] = max(
            min(d for d in (r["shifts"][name]["delay"][k] for k in DETECTORS) if d is not None) for r in runs
        )
        row["accuracy_before"] = statistics.mean(r["shifts"][name]["accuracy_before"] for r in runs)
        row["accuracy_shifted"] = statistics.mean(r["shifts"][name]["accuracy_shifted"] for r in runs)
        summary["shifts"][name] = row
        worst = row["data"]["max"] if name != "class-prior" else row["first_detector_max_delay"]
        which = "data drift" if name != "class-prior" else "first detector"
        targets.append(
            target(
                f"{name}: {which} delay, worst of {seeds} seeds (samples)",
                worst,
                "<= 500",
                worst is not None and worst <= 500,
            )
        )
    for det in DETECTORS:
        summary["false_alarms_20k_clean"][det] = sum(r["clean"]["false_alarms"][det] for r in runs)
    early = sum(summary["shifts"][n][d]["alarms_before_shift"] for n in SHIFTS for d in DETECTORS)
    total_fa = sum(summary["false_alarms_20k_clean"].values())
    allowed = seeds * CLEAN / settings.false_alarm_samples  # the policy's ARL, for the monitor as a whole
    summary["false_alarms_allowed_by_policy"] = allowed
    summary["runs_with_a_false_alarm"] = sum(any(r["clean"]["false_alarms"].values()) for r in runs)
    targets.append(
        target(
            f"false alarms in {seeds} x 20,000 clean samples, all detectors (the policy's ARL allows {allowed:g})",
            total_fa,
            "0",
            total_fa == 0,
        )
    )
    targets.append(target("alarms before the shift (2000 clean test samples per run)", early, "0", early == 0))
    targets.append(
        target(
            "ADWIN: delay of a 0.1 -> 0.3 error jump, worst of 20 (bits)",
            adwin["max_delay"],
            "<= 300",
            adwin["max_delay"] is not None and adwin["max_delay"] <= 300,
        )
    )
    targets.append(
        target(
            "ADWIN: false cuts in 20 x 20,000 stationary bits",
            adwin["false_cuts_stationary_0.1"],
            "0",
            adwin["false_cuts_stationary_0.1"] == 0,
        )
    )
    mmd_s = comparison["mmd"]["check_seconds_one_core"]
    targets.append(target("MMD check, 500 vs 2000 (s, one core)", mmd_s, "< 0.3", mmd_s < 0.3))
    payload = {
        "features": feats.name,
        "settings": {
            "window": settings.window,
            "reference_window": settings.reference_window,
            "false_alarm_samples": settings.false_alarm_samples,
            "alpha_per_check": settings.window // 5 / (settings.false_alarm_samples * SHARED_DETECTORS),
            "accuracy_drop": settings.accuracy_drop,
            "check_every": settings.window // 5,
            "data_method": "ks",
        },
        "streams": {"reference": REFERENCE, "clean": CLEAN, "before_shift": BEFORE, "shifted": SHIFTED, "seeds": seeds},
        "summary": summary,
        "method_comparison": comparison,
        "adwin": adwin,
        "runs": runs,
        "cpu_seconds": time.process_time() - cpu0,
        "wall_seconds": time.monotonic() - wall0,
        "targets": targets,
    }
    name = "drift_detectors" if args.features == "proj" else "drift_detectors-supernet"
    if args.false_alarm_samples is not None:
        name += f"-arl{args.false_alarm_samples}"
    out = write_results(name, payload)
    print(markdown_targets(targets))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
