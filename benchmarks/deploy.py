"""Benchmark: the deploy path on this machine: profile, latency model, export, and the peer.

    .venv/bin/python benchmarks/deploy.py                      # ~20 min on 2 cores
    .venv/bin/python benchmarks/deploy.py --subnets 4 --quick  # a few minutes, same code path

Needs a trained supernet (``lifelong train``; default ``STATE/supernet/supernet.pt``).
Writes ``benchmarks/results/deploy.json`` (``deploy-quick.json`` with ``--quick``):

- the device profile: its wall time, rows, and where W8A8 is slower than FP32;
- the latency model's error on random subnets it was not fitted on (batch 1 and 32);
- for subnets spanning the space (largest, smallest, and architectures at evenly spaced
  MACs quantiles): our FP32 export, our W8A8 export (learned scales, parity gate) and
  onnxruntime's ``quantize_static`` of our FP32 export (QDQ, per-channel, 512 training
  images), each with test accuracy on the 10k test set, file bytes and latency at batch 1
  and 32 measured side by side (the three sessions run in turn, so all see the same load);
  the latency model's prediction for the exported FP32 and W8A8 models.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_targets, target, write_results  # noqa: E402

from lifelong.data.datasets import load_fashion_mnist  # noqa: E402
from lifelong.deploy.export import export_subnet, kernel_counts, onnx_session, run_onnx  # noqa: E402
from lifelong.deploy.model_format import INPUT_NAME, INPUT_SHAPE  # noqa: E402
from lifelong.deploy.peer import CALIBRATION_IMAGES, ort_quantize  # noqa: E402
from lifelong.device.latency import calibrate  # noqa: E402
from lifelong.device.profile import profile_device  # noqa: E402
from lifelong.nn.checkpoint import file_sha256, load_checkpoint  # noqa: E402
from lifelong.nn.supernet import recalibrate_bn  # noqa: E402
from lifelong.space.config import Precision, SearchSpace  # noqa: E402
from lifelong.space.cost import subnet_cost  # noqa: E402
from service.state.paths import default_checkpoint, resolve_state_dir  # noqa: E402

W8A8, FP32 = Precision(8, 8), Precision(32, 32)
THREADS = 2


def side_by_side(models: dict[str, bytes], batch: int, rounds: int, warmup: int) -> dict[str, float]:
    """Median latency (ms) of each model, the sessions run in turn so that all see the same load."""
    sessions = {k: onnx_session(v, threads=THREADS) for k, v in models.items()}
    x = np.random.default_rng(batch).random((batch, *INPUT_SHAPE), dtype=np.float32)
    for _ in range(warmup):
        for s in sessions.values():
            s.run(None, {INPUT_NAME: x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {INPUT_NAME: x})
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


def spanning_subnets(space: SearchSpace, n: int, seed: int = 2026) -> list:
    """Largest, smallest, and ``n - 2`` random architectures at evenly spaced MACs quantiles."""
    rng = np.random.default_rng(seed)
    pool = sorted((space.sample(rng, (W8A8,)) for _ in range(500)), key=lambda c: subnet_cost(space, c).macs)
    picks = [pool[round(i)] for i in np.linspace(0, len(pool) - 1, max(0, n - 2))]
    return [space.largest(W8A8), space.smallest(W8A8), *picks][:n]


def top1(model: bytes, x: np.ndarray, y: np.ndarray) -> float:
    logits, _ = run_onnx(onnx_session(model, threads=THREADS), x)
    return float((logits.argmax(1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="[STATE/supernet/supernet.pt]")
    ap.add_argument("--subnets", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="short profile and latency check, 2k test images")
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work" / "deploy")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    name = "deploy-quick" if args.quick else "deploy"
    ckpt = args.checkpoint or default_checkpoint(resolve_state_dir(None))
    model = load_checkpoint(ckpt).build()
    space: SearchSpace = model.space
    sha = file_sha256(ckpt)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    calib = train.split(0.1, seed=0)[0].head(2000).as_float()
    ptq_calib = train.head(CALIBRATION_IMAGES).as_float()
    n_test = 2000 if args.quick else len(test)
    x_test, y_test = test.as_float()[:n_test], test.y[:n_test]

    load_start = os.getloadavg()
    # 1. the profile and the latency model
    t0 = time.monotonic()
    prof = profile_device(space, threads=THREADS, only=200 if args.quick else None)
    profile_seconds = time.monotonic() - t0
    checks = [] if args.quick else calibrate(prof, space, check_subnets=50)
    prof.save(args.work / "device.json")
    w8_rows = sum(1 for k in prof.entries if k.endswith(":w8a8"))
    slower = {str(b): prof.int8_slower(b) for b in prof.batches}
    print(f"profile: {len(prof.entries)} rows in {profile_seconds:.0f} s", flush=True)
    for c in checks:
        print(f"latency model b{c.batch}: {100 * c.within_10pct:.0f}% within +-10%", flush=True)

    # 2. the subnets: ours FP32, ours W8A8, onnxruntime PTQ of our FP32
    rows = []
    for i, arch in enumerate(spanning_subnets(space, args.subnets)):
        row: dict = {
            "subnet": str(arch),
            "macs": subnet_cost(space, arch).macs,
            "params": subnet_cost(space, arch).params,
        }
        models: dict[str, bytes] = {}
        for label, prec in (("fp32", FP32), ("ours_w8a8", W8A8)):
            cfg = arch.with_precision(prec)
            sub = model.get_subnet(cfg)
            recalibrate_bn(sub, torch.from_numpy(calib))
            sub.eval()
            rep = export_subnet(
                sub,
                args.work / f"{i:02d}-{label}.onnx",
                x_test,
                y_test,
                checkpoint_sha256=sha,
                calibration=calib[:1000],
            )
            models[label] = rep.path.read_bytes()
            row[label] = {"top1": rep.parity.onnx_top1, "bytes": rep.bytes, "parity": rep.parity.to_dict()}
            row[label]["requantized"] = rep.requantized
            row[label]["requant_parity"] = rep.requant_parity.to_dict() if rep.requant_parity else None
            row[label]["predicted_ms"] = {str(b): prof.predict(space, cfg, b) for b in prof.batches if not args.quick}
        t_ptq = time.monotonic()
        models["ort_ptq"] = ort_quantize(models["fp32"], ptq_calib, args.work / f"{i:02d}-ort_ptq.onnx")
        row["ort_ptq"] = {
            "top1": top1(models["ort_ptq"], x_test, y_test),
            "bytes": len(models["ort_ptq"]),
            "quantize_seconds": time.monotonic() - t_ptq,
        }
        for label in ("ours_w8a8", "ort_ptq"):
            row[label]["fusion"] = kernel_counts(models[label])
        for b, (rounds, warm) in ((1, (60, 10)), (32, (15, 3))):
            for label, ms in side_by_side(models, b, rounds, warm).items():
                row[label].setdefault("measured_ms", {})[str(b)] = ms
        rows.append(row)
        print(
            f"{i:2d} {row['macs'] / 1e6:6.2f} MMACs  top-1 fp32 {100 * row['fp32']['top1']:.2f} ours "
            f"{100 * row['ours_w8a8']['top1']:.2f} ptq {100 * row['ort_ptq']['top1']:.2f}  b1 ms "
            + " ".join(f"{k} {row[k]['measured_ms']['1']:.3f}" for k in models)
            + "  b32 ms "
            + " ".join(f"{k} {row[k]['measured_ms']['32']:.2f}" for k in models),
            flush=True,
        )

    # 3. targets
    def ratio(a: str, b: str, batch: int) -> list[float]:
        return [r[a]["measured_ms"][str(batch)] / r[b]["measured_ms"][str(batch)] for r in rows]

    ours_vs_ptq = [r["ours_w8a8"]["top1"] - r["ort_ptq"]["top1"] for r in rows]
    worst_parity = min(r["ours_w8a8"]["parity"]["agreement"] for r in rows)
    worst_gap = max(r[k]["parity"]["accuracy_gap"] for r in rows for k in ("fp32", "ours_w8a8"))
    targets = [
        target("full profile wall time (s)", profile_seconds, "<= 300", profile_seconds <= 300),
        target("worst W8A8 parity agreement (%)", 100 * worst_parity, ">= 99.5", worst_parity >= 0.995),
        target("worst torch vs onnx accuracy gap (pt)", 100 * worst_gap, "<= 0.3", worst_gap <= 0.003),
        target(
            "our W8A8 at least as accurate as ORT PTQ (subnets)",
            float(sum(d >= 0 for d in ours_vs_ptq)),
            f"{len(rows)} of {len(rows)}",
            all(d >= 0 for d in ours_vs_ptq),
        ),
    ]
    for c in checks:
        targets.append(
            target(f"latency model within +-10% at batch {c.batch} (% of {len(c.subnets)})", 100 * c.within_10pct,
                   ">= 90", c.within_10pct >= 0.9)
        )  # fmt: skip
    summary = {
        "median_ratio_ours_w8a8_to_fp32_ms": {str(b): float(np.median(ratio("ours_w8a8", "fp32", b))) for b in (1, 32)},
        "median_ratio_ort_ptq_to_fp32_ms": {str(b): float(np.median(ratio("ort_ptq", "fp32", b))) for b in (1, 32)},
        "median_ratio_ours_w8a8_to_ort_ptq_ms": {
            str(b): float(np.median(ratio("ours_w8a8", "ort_ptq", b))) for b in (1, 32)
        },
        "ours_w8a8_minus_ort_ptq_top1_pt": {
            "mean": 100 * float(np.mean(ours_vs_ptq)),
            "min": 100 * float(np.min(ours_vs_ptq)),
            "max": 100 * float(np.max(ours_vs_ptq)),
        },
    }
    if not args.quick:
        for lbl in ("fp32", "ours_w8a8"):
            for b in prof.batches:
                e = [r[lbl]["predicted_ms"][str(b)] / r[lbl]["measured_ms"][str(b)] - 1 for r in rows]
                summary[f"latency_model_rel_error_{lbl}_exports_b{b}"] = {
                    "median_abs": float(np.median(np.abs(e))),
                    "within_10pct": float(np.mean(np.abs(e) <= 0.1)),
                }
    out = write_results(
        name,
        {
            "checkpoint": str(ckpt),
            "checkpoint_sha256": sha,
            "threads": THREADS,
            "test_images": n_test,
            "load_average": {"start": load_start, "end": os.getloadavg()},
            "profile": {
                "seconds": profile_seconds,
                "rows": len(prof.entries),
                "fingerprint": prof.fingerprint,
                "w8a8_rows": w8_rows,
                "w8a8_slower_than_fp32": {b: len(v) for b, v in slower.items()},
                "w8a8_slower_examples": {b: v[:10] for b, v in slower.items()},
            },
            "latency_model": [c.to_dict() for c in checks],
            "correction": prof.correction,
            "subnets": rows,
            "summary": summary,
            "targets": targets,
        },
    )
    print(markdown_targets(targets))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
