"""Benchmark (the headline): the searched front against what a user would pick instead.

    .venv/bin/python benchmarks/search.py            # ~30-60 min on 2 cores: baselines ~10-20 min each, exports ~10 min
    .venv/bin/python benchmarks/search.py --quick    # a few minutes, same code path

Needs the trained supernet (``lifelong train``; default ``STATE/supernet/supernet.pt``), the
device profile (``lifelong profile``; ``STATE/profile/device.json``) and the accuracy
predictor (``lifelong predictor collect`` then ``lifelong predictor build``;
``STATE/predictor/predictor.npz``). Writes ``benchmarks/results/search.json`` and
``search.png`` (batch 1) / ``search-b32.png`` (``--quick``: ``search-quick.json``, plots in
the work folder):

1. the baselines (:mod:`baselines`): the tutorial CNN, a wider three-stage CNN, a
   MobileNetV2-style network and a global-pool small CNN, each trained alone with the
   supernet's recipe for as many epochs as the supernet had (read from its checkpoint),
   exported FP32 with BN folded, and quantized by onnxruntime's ``quantize_static`` in the
   configuration that serves it best (:mod:`ptq`: signed/unsigned activations x MinMax /
   Percentile / Entropy); and the supernet's largest subnet at W8A8 through our exporter;
2. the search: ``search_front`` (NSGA-II over the predictor and the profile's latency model)
   for the policy (default the ``balanced`` preset, whose budgets almost every subnet meets),
   with measured picks (:mod:`lifelong.search.measure`): the ``--measure`` best candidates are
   timed on this device (their graphs with random weights) and the front is rebuilt on that
   measured latency;
3. the front points to export: ``--points`` spread over predicted latency, and for each
   baseline (INT8 (a), (b) and (c), timed once first) the two its targets ask about, chosen
   as a policy would choose them, on measured latency: the most accurate within its
   latency, the fastest at its top-1. Each is re-calibrated (BN, on the predictor's calibration
   images) and exported with our exporter behind the parity gate on the test images, which
   gives its test top-1;
4. every model (front points, baselines FP32 and INT8, largest W8A8) timed side by side in
   one run with :class:`lifelong.device.profile.PairedTimer` (each timing paired with the profile's
   reference graph and scaled to its speed, so that load on the shared cores cancels),
   ``--passes`` rounds over all models, the median kept; batch 1 and 32;
5. targets at the policy's batch size, for each baseline (INT8 for (a) and (b)): a measured
   front point at most as slow and at least 0.5 pt more accurate; a measured front point at
   least as accurate and at least 1.5x faster. The FP32 baselines and batch 32 are compared
   too (in ``comparisons``), without targets;
   With ``--finetune-seconds`` (default the policy's ``export.finetune_seconds``), each point
   picked for a baseline is first exported as is (``supernet_top1``), then fine-tuned alone
   (:mod:`lifelong.train.finetune`) and exported again: the targets use what the service would
   deploy, and ``finetune.comparisons_before`` keeps the comparisons on supernet weights;
6. the predictor's error on the exported points (accuracy and latency), and the front with
   the measured figures (``Front.with_measurement``) in the work folder.

Baseline training checkpoints per epoch in ``benchmarks/work/search/`` and resumes there.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import WORK, BaselineModels, prepare_baseline, recipe_from_checkpoint  # noqa: E402
from common import RESULTS, markdown_targets, target, write_results  # noqa: E402

from lifelong.data.datasets import load_fashion_mnist  # noqa: E402
from lifelong.deploy.export import export_subnet, kernel_counts  # noqa: E402
from lifelong.device.profile import DeviceProfile, PairedTimer, device_fingerprint  # noqa: E402
from lifelong.errors import LifelongError, ParityError  # noqa: E402
from lifelong.nn.checkpoint import file_sha256, load_checkpoint  # noqa: E402
from lifelong.nn.supernet import recalibrate_bn  # noqa: E402
from lifelong.predictor.mlp import kendall_tau  # noqa: E402
from lifelong.predictor.samples import PredictorData, calibration_images  # noqa: E402
from lifelong.search.front import Front, FrontPoint, plot_front  # noqa: E402
from lifelong.search.front_search import SearchSettings, input_record, measured_accuracies, search_front  # noqa: E402
from lifelong.search.measure import MeasureSettings  # noqa: E402
from lifelong.space.config import Precision, SearchSpace  # noqa: E402
from lifelong.space.cost import subnet_cost  # noqa: E402
from lifelong.train.finetune import FinetuneConfig, finetune_subnet  # noqa: E402
from lifelong.train.trainer import TrainConfig, training_tensors  # noqa: E402
from service.state.paths import (  # noqa: E402
    default_checkpoint,
    default_predictor,
    default_predictor_data,
    default_profile,
    resolve_state_dir,
)

W8A8 = Precision(8, 8)
THREADS = 2
GAIN_PT, SPEEDUP = 0.5, 1.5
BASELINE_LABELS = {"tutorial": "tutorial CNN", "wide": "wider CNN", "mbv2": "MobileNetV2-style", "cnn": "small CNN"}
HEADLINE_TOP1 = 0.935  # a front point at least this accurate at or under the tutorial CNN INT8's latency

logger = logging.getLogger("search_benchmark")


# -- inputs ---------------------------------------------------------------------------------------
def load_inputs(args: argparse.Namespace) -> tuple[Any, DeviceProfile, Path, Path]:
    """The predictor and the profile, with errors that name the command making each."""
    from lifelong.predictor.mlp import AccuracyPredictor

    state = resolve_state_dir(args.state_dir)
    predictor_path = args.predictor or default_predictor(state)
    profile_path = args.profile or default_profile(state)
    if not predictor_path.exists():
        raise SystemExit(
            f"error: no accuracy predictor at {predictor_path}: collect its data with `lifelong predictor collect`, "
            "build it with `lifelong predictor build`, or pass --predictor"
        )
    if not profile_path.exists():
        raise SystemExit(f"error: no device profile at {profile_path}: run `lifelong profile`, or pass --profile")
    return AccuracyPredictor.load(predictor_path), DeviceProfile.load(profile_path), predictor_path, profile_path


def spread_points(front: Front, k: int, batch: int) -> list[FrontPoint]:
    """``k`` points of ``front`` spread evenly over log latency at ``batch`` (measured where timed), both ends
    included: the fastest point and the slowest (the most accurate)."""
    pts = list(front.sorted(batch).points)
    if len(pts) <= k:
        return pts
    lat = np.log([max(p.latency_at(batch), 1e-6) for p in pts])
    chosen: list[int] = []
    for goal in np.linspace(lat[0], lat[-1], k):
        free = [i for i in range(len(pts)) if i not in chosen]
        chosen.append(min(free, key=lambda i: (abs(lat[i] - goal), i)))
    return [pts[i] for i in sorted(chosen)]


def pick_points(
    front: Front, k: int, batch: int, aims: dict[str, tuple[float, float]]
) -> list[tuple[FrontPoint, list[str]]]:
    """The points to export: ``k`` spread over latency (:func:`spread_points`), and for each
    baseline ``name -> (latency ms, top-1)`` the two points its targets ask about, chosen as a
    policy would (:func:`lifelong.search.front.choose`): on the measured latency where the front has
    one (measured picks), else predicted, the most accurate no slower than the baseline, and
    the fastest at least as accurate. Each point comes with why it was picked."""
    why: dict[str, list[str]] = {}
    for p in spread_points(front, k, batch):
        why.setdefault(p.subnet, []).append("spread")
    pts = front.points
    for name, (ms, top1) in aims.items():
        under = [p for p in pts if p.latency_at(batch) <= ms]
        if under:
            best = max(under, key=lambda p: (p.best_accuracy(), -p.latency_at(batch)))
            why.setdefault(best.subnet, []).append(f"most accurate within {name}'s latency")
        good = [p for p in pts if p.best_accuracy() >= top1]
        if good:
            fast = min(good, key=lambda p: (p.latency_at(batch), -p.best_accuracy()))
            why.setdefault(fast.subnet, []).append(f"fastest at {name}'s top-1")
    chosen = [front[s] for s in why]
    chosen.sort(key=lambda p: (p.latency_at(batch), p.subnet))
    return [(p, why[p.subnet]) for p in chosen]


# -- measuring ------------------------------------------------------------------------------------
def time_side_by_side(timer: PairedTimer, models: dict[str, bytes], passes: int) -> dict[str, dict[str, float]]:
    """Median over ``passes`` rounds of each model's paired latency (ms at the profile's reference
    speed), the models taken in turn within each round so that all see the same load."""
    runs: dict[str, list[dict[int, float]]] = {k: [] for k in models}
    for r in range(passes):
        t0 = time.monotonic()
        for name, model in models.items():
            runs[name].append(timer.measure(model))
        logger.info("timing pass %d/%d: %d models in %.0f s", r + 1, passes, len(models), time.monotonic() - t0)
    return {
        name: {str(b): float(np.median([m[b] for m in ms])) for b in timer.profile.batches} for name, ms in runs.items()
    }


@dataclass(frozen=True)
class Tuning:
    """Fine-tuning of a picked point before its export, as the service does with the policy's
    ``export.finetune_seconds`` (:mod:`lifelong.train.finetune`): the config and the training split."""

    config: FinetuneConfig
    x_train: torch.Tensor
    y_train: torch.Tensor


def export_point(model: Any, space: SearchSpace, subnet: str, path: Path, calib: np.ndarray, x: np.ndarray,
                 y: np.ndarray, sha: str, tuning: Tuning | None = None) -> tuple[dict[str, Any], bytes | None]:  # fmt: skip
    """Our export of ``subnet`` (BN re-calibrated) behind the parity gate: its figures and bytes.

    With ``tuning`` the supernet-weights export is measured first (``supernet_top1``), then the
    subnet is fine-tuned alone and exported again: ``top1`` and the bytes are the fine-tuned
    model's, what the service would deploy."""
    cfg = space.parse(subnet)
    sub = model.get_subnet(cfg)
    recalibrate_bn(sub, torch.from_numpy(calib))
    sub.eval()
    cost = subnet_cost(space, cfg)
    row: dict[str, Any] = {"subnet": subnet, "macs": cost.macs, "params": cost.params}
    try:
        rep = export_subnet(sub, path, x, y, checkpoint_sha256=sha, calibration=calib)
        row["supernet_top1"] = rep.parity.onnx_top1
        if tuning is not None:
            tuned = finetune_subnet(sub, tuning.x_train, tuning.y_train, calib, tuning.config, progress=False)
            row["finetune"] = {**tuned.to_dict(), "lr": tuning.config.lr}
            logger.info("%s fine-tuned %d steps in %.0f s", subnet, tuned.steps, tuned.seconds)
            rep = export_subnet(sub, path, x, y, checkpoint_sha256=sha, calibration=calib)
    except ParityError as exc:
        logger.warning("export of %s failed the parity gate: %s", subnet, exc)
        row["export_error"] = str(exc)
        return row, None
    data = rep.path.read_bytes()
    row.update(
        top1=rep.parity.onnx_top1,
        torch_top1=rep.parity.torch_top1,
        bytes=rep.bytes,
        parity=rep.parity.to_dict(),
        requantized=rep.requantized,
        fusion=kernel_counts(data),
        export_seconds=rep.seconds,
    )
    return row, data


# -- comparing ------------------------------------------------------------------------------------
def compare(
    points: list[dict[str, Any]], base_top1: float, base_ms: float, batch: int, key: str = "top1"
) -> dict[str, Any]:
    """The best measured front point at the baseline's latency, and the fastest at its accuracy
    (``key``: ``top1`` as deployed, or ``supernet_top1`` before any fine-tuning)."""
    b = str(batch)
    faster = [p for p in points if p["measured_ms"][b] <= base_ms]
    as_good = [p for p in points if p[key] >= base_top1]
    best = max(faster, key=lambda p: (p[key], -p["measured_ms"][b]), default=None)
    quickest = min(as_good, key=lambda p: (p["measured_ms"][b], -p[key]), default=None)
    return {
        "batch": batch,
        "baseline_top1": base_top1,
        "baseline_ms": base_ms,
        "gain_at_latency_pt": None if best is None else 100 * (best[key] - base_top1),
        "gain_point": None if best is None else best["subnet"],
        "speedup_at_accuracy": None if quickest is None else base_ms / quickest["measured_ms"][b],
        "speedup_point": None if quickest is None else quickest["subnet"],
    }


def predictor_error(points: list[dict[str, Any]], batches: tuple[int, ...]) -> dict[str, Any]:
    """How far the search's predictions were from the measurements on the exported points.

    Predicted accuracy is validation accuracy (what the predictor was trained on), measured
    is test accuracy, so part of the error is the split's."""
    pred = np.array([p["predicted"]["accuracy"] for p in points])
    meas = np.array([p["top1"] for p in points])
    err = 100 * (pred - meas)
    out: dict[str, Any] = {
        "points": len(points),
        "accuracy_error_pt": {
            "mean": float(err.mean()),
            "mean_abs": float(np.abs(err).mean()),
            "max_abs": float(np.abs(err).max()),
        },  # fmt: skip
        "accuracy_kendall_tau": kendall_tau(pred, meas) if len(points) > 2 else None,
    }
    for b in batches:
        rel = [p["predicted"]["latency_ms"][str(b)] / p["measured_ms"][str(b)] - 1 for p in points]
        out[f"latency_rel_error_b{b}"] = {
            "median_abs": float(np.median(np.abs(rel))),
            "within_10pct": float(np.mean(np.abs(rel) <= 0.1)),
            "values": [float(v) for v in rel],
        }
        timed = [p for p in points if "graph_ms" in p]
        if timed:  # what the measured picks chose on: the graph's timing against the export's
            rel = [p["graph_ms"][str(b)] / p["measured_ms"][str(b)] - 1 for p in timed]
            out[f"graph_rel_error_b{b}"] = {
                "median_abs": float(np.median(np.abs(rel))),
                "within_10pct": float(np.mean(np.abs(rel) <= 0.1)),
                "values": [float(v) for v in rel],
            }
    return out


def tuned_label(point: dict[str, Any]) -> str:
    """`` (fine-tuned N s, X% before)`` for a fine-tuned point, else nothing."""
    ft = point.get("finetune")
    if not ft:
        return ""
    return f" (fine-tuned {ft['seconds']:.0f} s; {100 * point['supernet_top1']:.2f}% before)"


def markdown_table(baselines: dict[str, dict[str, Any]], points: list[dict[str, Any]], batch: int) -> str:
    """Baselines and measured front points: top-1, latency at batch 1 and 32, bytes."""
    lines = ["| model | top-1 (%) | ms @1 | ms @32 | bytes |", "|---|---|---|---|---|"]
    for name, b in baselines.items():
        ms = b["measured_ms"]
        lines.append(f"| {name} | {100 * b['top1']:.2f} | {ms['1']:.3f} | {ms['32']:.2f} | {b['bytes']:,} |")
    for p in sorted(points, key=lambda p: p["measured_ms"][str(batch)]):
        ms = p["measured_ms"]
        lines.append(
            f"| front `{p['subnet']}`{tuned_label(p)} | {100 * p['top1']:.2f} | {ms['1']:.3f} | {ms['32']:.2f} "
            f"| {p['bytes']:,} |"
        )
    return "\n".join(lines)


# -- the run --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="[STATE/supernet/supernet.pt]")
    ap.add_argument("--predictor", type=Path, default=None, help="[STATE/predictor/predictor.npz]")
    ap.add_argument("--profile", type=Path, default=None, help="[STATE/profile/device.json]")
    ap.add_argument("--samples", type=Path, default=None,
                    help="predictor data whose measured subnets keep their measurement [STATE/predictor/samples.json]")  # fmt: skip
    ap.add_argument("--state-dir", type=Path, default=None)
    ap.add_argument("--policy", default="balanced", help="preset name or policy file [balanced]")
    ap.add_argument("--points", type=int, default=None, help="front points exported and measured [8; quick 3]")
    ap.add_argument("--budget", type=int, default=None, help="search evaluations [20000; quick 2000]")
    ap.add_argument("--seed", type=int, default=0, help="search seed [0]")
    ap.add_argument("--passes", type=int, default=None, help="timing rounds over all models [3; quick 1]")
    ap.add_argument("--baseline-epochs", type=int, default=None, help="[the supernet's, from its checkpoint]")
    ap.add_argument("--train-threads", type=int, default=THREADS,
                    help=f"torch threads while training the baselines [{THREADS}; 1 is faster on a busy machine]")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="1 epoch of baselines on 4k images, 2k test images, K=3")
    ap.add_argument("--work", type=Path, default=None, help=f"[{WORK}; quick: {WORK / 'quick'}]")
    ap.add_argument("--out", type=Path, default=None, help="[benchmarks/results/search.json]")
    ap.add_argument("--finetune-seconds", type=float, default=None,
                    help="fine-tune each point picked for a baseline alone this long before its export, as the "
                         "service does [the policy's export.finetune_seconds]; 0: none")  # fmt: skip
    ap.add_argument("--measure", type=int, default=None,
                    help="measured picks: the search's best candidates timed before the picks [96; quick 24]; 0: "
                         "pick on predicted latency")  # fmt: skip
    args = ap.parse_args(argv)
    args.measure = (24 if args.quick else 96) if args.measure is None else args.measure
    args.points = args.points or (3 if args.quick else 8)
    args.budget = args.budget or (2000 if args.quick else 20_000)
    args.passes = args.passes or (1 if args.quick else 3)
    args.work = args.work or (WORK / "quick" if args.quick else WORK)
    if args.points < 1 or args.passes < 1:
        ap.error("--points and --passes must be >= 1")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from policies import PolicyError
    from service.cli.search import resolve_policy

    torch.set_num_threads(THREADS)
    name = "search-quick" if args.quick else "search"
    t_start = time.monotonic()
    load_start = os.getloadavg()
    try:
        ckpt_path = args.checkpoint or default_checkpoint(resolve_state_dir(args.state_dir))
        ck = load_checkpoint(ckpt_path)
        predictor, profile, predictor_path, profile_path = load_inputs(args)
        policy, policy_source = resolve_policy(args.policy, args.state_dir)
    except (LifelongError, PolicyError) as exc:  # PolicyError: policies imports nothing of ours
        raise SystemExit(f"error: {exc}") from None
    batch = policy.target.batch
    if batch not in profile.batches or 32 not in profile.batches:
        raise SystemExit(f"error: the profile {profile_path} measured batches {list(profile.batches)}; "
                         f"this benchmark needs {sorted({batch, 32})}: run `lifelong profile`")  # fmt: skip
    stale = profile.stale_reasons(device_fingerprint(int(profile.fingerprint.get("threads", THREADS))))
    if stale:
        logger.warning("the device profile was taken elsewhere or with other settings: %s", "; ".join(stale))
    model = ck.build()
    space: SearchSpace = model.space
    sha = file_sha256(ckpt_path)
    if predictor.meta.get("checkpoint_sha256") not in (None, sha):
        logger.warning("the predictor was built on another checkpoint (%s)", predictor.meta.get("checkpoint_sha256"))

    recipe = recipe_from_checkpoint(ck)
    supernet_epochs = len(ck.record)
    epochs = args.baseline_epochs or (1 if args.quick else recipe.epochs)
    recipe = TrainConfig(
        **{**recipe.to_dict(), "epochs": epochs, **({"max_train_samples": 4000} if args.quick else {})}
    )
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    train_part, _ = train.split(recipe.val_fraction, seed=recipe.seed)
    calib = calibration_images(train_part, 1000, 0)  # what the predictor's subnets were calibrated on
    n_test = 2000 if args.quick else len(test)
    x_test, y_test = test.as_float()[:n_test], test.y[:n_test]
    args.work.mkdir(parents=True, exist_ok=True)

    # 1. the baselines a user would pick: trained alone, exported, quantized by onnxruntime
    t0 = time.monotonic()
    torch.set_num_threads(args.train_threads)
    base: dict[str, BaselineModels] = {
        k: prepare_baseline(k, recipe, train, x_test, y_test, args.work) for k in BASELINE_LABELS
    }
    torch.set_num_threads(THREADS)
    baselines_seconds = time.monotonic() - t0

    # 2. the search
    measured, why = {}, "no predictor data"
    samples = args.samples or default_predictor_data(resolve_state_dir(args.state_dir))
    if samples.exists():
        measured, why = measured_accuracies(PredictorData.load(samples), predictor)
    logger.info("measured accuracies: %s", why)
    found = search_front(
        predictor, profile, policy, space=space,
        settings=SearchSettings(evaluations=args.budget, seed=args.seed, warm_start=False,
                                measure=MeasureSettings(candidates=args.measure)),
        record={**input_record(predictor_path, profile_path), "policy_source": policy_source},
        measured=measured,
    )  # fmt: skip
    front = found.front
    if not len(front):
        raise SystemExit(f"error: the search found no subnet within the budgets of policy {policy.name!r}")

    # 3. the largest subnet at W8A8, and a first timing of the baselines to aim the picks at
    largest = str(space.largest(W8A8))
    largest_row, largest_data = export_point(model, space, largest, args.work / "largest-w8a8.onnx", calib, x_test,
                                             y_test, sha)  # fmt: skip
    if largest_data is None:
        raise SystemExit(f"error: the largest subnet failed the parity gate: {largest_row['export_error']}")
    models: dict[str, bytes] = {"largest_w8a8": largest_data}
    for k, b in base.items():
        models[f"{k}_int8"], models[f"{k}_fp32"] = b.int8, b.fp32
    timer = PairedTimer(profile, space)
    first = {k: timer.measure(v)[batch] for k, v in models.items() if not k.endswith("_fp32")}
    aims = {f"{k}_int8": (first[f"{k}_int8"], b.top1["int8"]) for k, b in base.items()}
    aims["largest_w8a8"] = (first["largest_w8a8"], largest_row["top1"])
    picked = pick_points(front, args.points, batch, aims)
    logger.info("front of %d points; exporting %d", len(front), len(picked))

    # 4. exports of the picked front points; those picked for a baseline fine-tuned first where
    #    the policy (or --finetune-seconds) asks for it, as the service would deploy them
    seconds = policy.export.finetune_seconds if args.finetune_seconds is None else args.finetune_seconds
    tuning = None
    if seconds > 0:
        x_tr, y_tr = training_tensors(train, replace(recipe, max_train_samples=None))
        tuning = Tuning(FinetuneConfig(seconds=seconds), x_tr, y_tr)
    points, failed = [], []
    for i, (p, why) in enumerate(picked):
        aimed = any(w != "spread" for w in why)
        row, data = export_point(model, space, p.subnet, args.work / f"front-{i:02d}.onnx", calib, x_test, y_test,
                                 sha, tuning if aimed else None)  # fmt: skip
        row["picked_for"] = why
        row["predicted"] = {
            "accuracy": p.accuracy,
            "latency_ms": {str(b): ms for b, ms in p.latency_ms},
            "model_bytes": p.model_bytes,
        }
        if p.measured_latency_ms is not None:  # measured picks: the graph timed with random weights
            row["graph_ms"] = {str(b): ms for b, ms in p.measured_latency_ms}
        if data is None:
            failed.append(row)
            continue
        models[f"front-{i:02d}"] = data
        row["key"] = f"front-{i:02d}"
        points.append(row)
    if not points:
        raise SystemExit("error: no front point passed the parity gate; see the log")

    # 5. latency, all models side by side
    ms = time_side_by_side(timer, models, args.passes)
    for row in points:
        row["measured_ms"] = ms[row.pop("key")]
    baselines: dict[str, dict[str, Any]] = {}
    for k, b in base.items():
        for prec in ("int8", "fp32"):
            data = b.int8 if prec == "int8" else b.fp32
            baselines[f"{BASELINE_LABELS[k]} {prec.upper()}"] = {
                "top1": b.top1[prec],
                "measured_ms": ms[f"{k}_{prec}"],
                "bytes": len(data),
                **({"fusion": kernel_counts(data)} if prec == "int8" else {}),
            }
    baselines["largest subnet W8A8"] = {**largest_row, "measured_ms": ms["largest_w8a8"]}

    # 6. comparisons and targets
    comparisons, comparisons_supernet, targets = [], [], []
    for label, b in baselines.items():
        for bb in sorted({batch, 32}):
            c = {"baseline": label, **compare(points, b["top1"], b["measured_ms"][str(bb)], bb)}
            comparisons.append(c)
            if tuning is not None:
                before = compare(points, b["top1"], b["measured_ms"][str(bb)], bb, key="supernet_top1")
                comparisons_supernet.append({"baseline": label, **before})
            if bb != batch or label.endswith("FP32"):
                continue
            gain, speed = c["gain_at_latency_pt"], c["speedup_at_accuracy"]
            targets.append(target(f"vs {label}: top-1 gain at its batch-{bb} latency (pt)", gain,
                                  f">= +{GAIN_PT}", gain is not None and gain >= GAIN_PT))  # fmt: skip
            targets.append(target(f"vs {label}: speed-up at its top-1, batch {bb} (x)", speed,
                                  f">= {SPEEDUP}", speed is not None and speed >= SPEEDUP))  # fmt: skip

    if "tutorial CNN INT8" in baselines:
        tut_ms = baselines["tutorial CNN INT8"]["measured_ms"][str(batch)]
        under = [r["top1"] for r in points if r["measured_ms"][str(batch)] <= tut_ms]
        best = max(under) if under else None
        targets.append(target(f"best front top-1 at or under the tutorial CNN INT8's batch-{batch} latency (%)",
                              None if best is None else 100 * best, f">= {100 * HEADLINE_TOP1}",
                              best is not None and best >= HEADLINE_TOP1))  # fmt: skip

    # 7. the measured front, the plots, the results
    measured = front
    for row in points:
        measured = measured.with_measurement(
            row["subnet"], accuracy=row["top1"], latency_ms={int(b): v for b, v in row["measured_ms"].items()},
            model_bytes=row["bytes"], latency_source="export",
        )  # fmt: skip
    measured.save(args.work / "front-measured.json")
    plot_dir = args.work if args.quick else (args.out.parent if args.out else RESULTS)
    pngs = []
    for bb in sorted({batch, 32}):
        drawn = {label: (b["measured_ms"][str(bb)], b["top1"]) for label, b in baselines.items()}
        png = plot_dir / (f"{name}.png" if bb == batch else f"{name}-b{bb}.png")
        plot_front(measured, png, batch=bb, baselines=drawn,
                   title=f"Fashion-MNIST test top-1 vs onnxruntime latency, batch {bb} ({len(points)} measured)")  # fmt: skip
        pngs.append(str(png))
    table = markdown_table(baselines, points, batch)
    finetune_record = None
    if tuning is not None:
        finetune_record = {"seconds": seconds, "lr": tuning.config.lr, "which": "points picked for a baseline",
                           "comparisons_before": comparisons_supernet}  # fmt: skip
    out = write_results(
        name,
        {
            "checkpoint": str(ckpt_path),
            "checkpoint_sha256": sha,
            "supernet_epochs": supernet_epochs,
            "baseline_recipe": recipe.to_dict(),
            "policy": {"name": policy.name, "source": policy_source, "batch": batch},
            "threads": THREADS,
            "test_images": n_test,
            "timing": {
                "timer": "lifelong.device.profile.PairedTimer",
                "passes": args.passes,
                "reference_ms": profile.reference_ms,
                "profile_stale": stale,
            },  # fmt: skip
            "load_average": {"start": load_start, "end": os.getloadavg()},
            "seconds": {"total": time.monotonic() - t_start, "baselines": baselines_seconds},
            "search": {"front_points": len(front), "record": front.info},
            "front_points": points,
            "failed_exports": failed,
            "baselines": baselines,
            "baseline_training": {k: b.to_dict() for k, b in base.items()},
            "finetune": finetune_record,
            "comparisons": comparisons,
            "predictor_error": predictor_error(points, profile.batches),
            "measured_front": str(args.work / "front-measured.json"),
            "plots": pngs,
            "readme_table": table,
            "targets": targets,
        },
        out=args.out,
    )
    print(table)
    print(markdown_targets(targets))
    print(f"-> {out}")
    return out


if __name__ == "__main__":
    main()
