"""Benchmark: how far the latency model is from onnxruntime here, and what the thread count buys.

    .venv/bin/python benchmarks/latency.py --state-dir /work/state-u12     # about 3 min on 2 cores

Needs a device profile (``lifelong profile``; default ``STATE/profile/device.json``) of search
space v2; with ``--front`` (default ``STATE/front/front.json`` when it exists) the front's
points are timed too. Torch is not needed. To rebuild from nothing: ``lifelong train`` (or
any v2 state), then ``lifelong profile --state-dir STATE``.

What it measures, on ``--subnets`` random subnets the latency model was not fitted on (drawn
like its fitting set, :func:`lifelong.device.latency.sample_mixed`, every share of integer layers,
from another seed):

1. **The latency model** (:meth:`DeviceProfile.predict`) against each subnet's graph timed with
   :class:`lifelong.device.profile.PairedTimer` at the profile's batch sizes: relative and absolute
   error distributions, the share within +-10% (or 10 us where 10% is less), Kendall tau; and
   the same figures for a second timing of each graph against the first (``repeat_b*``), the
   ceiling no model can pass when judged against one timing.
2. **Threads as a choice**: each graph timed with 1 and with 2 intra-op threads as the export
   times it (:func:`lifelong.device.threads.time_threads`: interleaved blocks, medians), twice: the
   first timing chooses the faster count per model and batch, the second (fresh sessions)
   checks the choice: how much slower the chosen count is than the other there (target:
   never more than 3%).
3. The same two on the front's points (what the service deploys), and the search's
   evaluation rate (predictor-free: the latency table alone, and the whole NSGA-II loop is
   in ``search.json``).

Writes ``benchmarks/results/latency.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import markdown_targets, target, write_results  # noqa: E402

from lifelong.deploy.onnx_graph import build_model  # noqa: E402
from lifelong.device.latency import sample_mixed  # noqa: E402
from lifelong.device.latency_table import LatencyTable  # noqa: E402
from lifelong.device.profile import DeviceProfile, PairedTimer, device_fingerprint, random_net  # noqa: E402
from lifelong.device.threads import choose_threads, time_threads  # noqa: E402
from lifelong.persist.digest import file_sha256  # noqa: E402
from lifelong.predictor.mlp import kendall_tau  # noqa: E402
from lifelong.search.front import Front  # noqa: E402
from lifelong.space.config import SearchSpace, SubnetConfig  # noqa: E402
from service.state.paths import default_front, default_profile, resolve_state_dir  # noqa: E402

logger = logging.getLogger("latency_benchmark")

INTEGER_SHARES = (0.0, 0.5, 0.8, 1.0)
WITHIN, FLOOR_MS = 0.10, 0.010  # +-10%, or 10 us where 10% is less
THREAD_SLACK = 0.03


def thread_rounds(model: bytes, batches: tuple[int, ...]) -> list[dict[str, dict[int, float]]]:
    """Two independent timings (:func:`lifelong.device.threads.time_threads`) of 1 and 2 threads at each
    batch: the first chooses as the export does, the second checks the choice."""
    out = []
    for _ in range(2):
        timed = time_threads(model, batches)
        out.append({str(t): {b: timed[b][t] for b in batches} for t in (1, 2)})
    return out


def thread_choice(rounds: list[dict[str, dict[int, float]]], batches: tuple[int, ...]) -> dict[str, Any]:
    """Chosen on round 1 (:func:`lifelong.device.threads.choose_threads`), checked on round 2: the
    chosen count's excess over the other there."""
    first, second = rounds[0], rounds[1]
    out: dict[str, Any] = {}
    for b in batches:
        chosen = str(choose_threads({b: {1: first["1"][b], 2: first["2"][b]}})[b])
        other = "2" if chosen == "1" else "1"
        out[str(b)] = {
            "chosen": int(chosen),
            "one_over_two": second["1"][b] / second["2"][b],
            "excess": second[chosen][b] / second[other][b] - 1.0,
        }
    return out


def errors(pred: np.ndarray, meas: np.ndarray) -> dict[str, Any]:
    rel = pred / meas - 1.0
    ab = pred - meas
    ok = (np.abs(rel) <= WITHIN) | (np.abs(ab) <= FLOOR_MS)
    q = [5, 25, 50, 75, 95]
    return {
        "within": float(ok.mean()),
        "kendall_tau": kendall_tau(pred, meas),
        "rel_percentiles": dict(zip(map(str, q), np.percentile(rel, q).tolist(), strict=True)),
        "abs_ms_percentiles": dict(zip(map(str, q), np.percentile(ab, q).tolist(), strict=True)),
        "median_abs_rel": float(np.median(np.abs(rel))),
        "median_rel": float(np.median(rel)),
    }


def measure_set(
    name: str, space: SearchSpace, profile: DeviceProfile, cfgs: list[SubnetConfig], timer: PairedTimer
) -> dict[str, Any]:
    rows = []
    t0 = time.monotonic()
    for i, cfg in enumerate(cfgs):
        model = build_model(random_net(space, cfg)).SerializeToString()
        measured = timer.measure(model)
        rounds = thread_rounds(model, profile.batches)
        again = timer.measure(model)  # the same graph timed again, after the thread timings
        rows.append({
            "subnet": str(cfg),
            "predicted_ms": {str(b): float(profile.predict(space, cfg, b)) for b in profile.batches},
            "measured_ms": {str(b): float(v) for b, v in measured.items()},
            "measured_again_ms": {str(b): float(v) for b, v in again.items()},
            "threads": {"rounds": rounds, "choice": thread_choice(rounds, profile.batches)},
        })  # fmt: skip
        if (i + 1) % 10 == 0:
            logger.info("%s: %d/%d timed (%.0f s)", name, i + 1, len(cfgs), time.monotonic() - t0)
    out: dict[str, Any] = {"subnets": len(rows), "seconds": time.monotonic() - t0, "rows": rows}
    for b in profile.batches:
        pred = np.array([r["predicted_ms"][str(b)] for r in rows])
        meas = np.array([r["measured_ms"][str(b)] for r in rows])
        out[f"model_b{b}"] = errors(pred, meas)
        # the measurement's own repeatability: the ceiling of any model judged against it
        out[f"repeat_b{b}"] = errors(np.array([r["measured_again_ms"][str(b)] for r in rows]), meas)
        ex = np.array([r["threads"]["choice"][str(b)]["excess"] for r in rows])
        ratio = np.array([r["threads"]["choice"][str(b)]["one_over_two"] for r in rows])
        out[f"threads_b{b}"] = {
            "one_thread_faster": float((ratio < 1).mean()),
            "one_over_two_median": float(np.median(ratio)),
            "one_over_two_range": [float(ratio.min()), float(ratio.max())],
            "choice_worst_excess": float(ex.max()),
            "choice_within_slack": float((ex <= THREAD_SLACK).mean()),
        }
    return out


def search_rate(profile: DeviceProfile, space: SearchSpace, n: int = 20_000) -> float:
    """Latency-table evaluations per second (the predictor's rate is in predictor.json)."""
    table = LatencyTable(profile, space)
    rng = np.random.default_rng(5)
    cfgs = [space.sample(rng) for _ in range(n)]
    codes = table.codec.codes(cfgs)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        table.predict(codes, 1)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--state-dir", type=Path, default=None)
    ap.add_argument("--profile", type=Path, default=None, help="[STATE/profile/device.json]")
    ap.add_argument("--front", type=Path, default=None, help="[STATE/front/front.json if it exists]")
    ap.add_argument("--subnets", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1000, help="held-out draw (the profile's fit uses seed 0)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    state = resolve_state_dir(args.state_dir)
    profile_path = args.profile or default_profile(state)
    profile = DeviceProfile.load(profile_path)
    space = SearchSpace()
    stale = profile.stale_reasons(device_fingerprint(int(profile.fingerprint.get("threads", 2))))
    if stale:
        logger.warning("the profile was taken elsewhere or with other settings: %s", "; ".join(stale))
    rng = np.random.default_rng(args.seed)
    held = [sample_mixed(space, rng, INTEGER_SHARES[i % len(INTEGER_SHARES)]) for i in range(args.subnets)]
    timer = PairedTimer(profile, space)
    sets = {"held_out": measure_set("held-out", space, profile, held, timer)}
    front_path = args.front or default_front(state)
    if front_path.is_file():
        front = Front.load(front_path)
        sets["front"] = measure_set("front", space, profile, [space.parse(p.subnet) for p in front.points], timer)
        sets["front"]["path"] = str(front_path)
    rate = search_rate(profile, space)

    targets = []
    h = sets["held_out"]
    for b in profile.batches:
        m = h[f"model_b{b}"]
        targets.append(target(f"latency model within +-10% (or 10 us), batch {b} (% of {h['subnets']})",
                              round(100 * m["within"], 1), ">= 90", m["within"] >= 0.9))  # fmt: skip
        targets.append(target(f"Kendall tau predicted vs measured, batch {b}", round(m["kendall_tau"], 3), ">= 0.9",
                              m["kendall_tau"] >= 0.9))  # fmt: skip
        r = h[f"repeat_b{b}"]
        print(f"batch {b}: the same graph timed twice agrees within +-10% (or 10 us) for {100 * r['within']:.0f}% "
              f"of the subnets (Kendall tau {r['kendall_tau']:.3f}): the ceiling of any model judged on one timing")  # fmt: skip
    targets.append(target("profile wall time (s)", round(profile.seconds, 1), "<= 300", profile.seconds <= 300))
    targets.append(target("latency table evaluations per second", round(rate), ">= 20000", rate >= 20_000))
    for name, s in sets.items():
        for b in profile.batches:
            t = s[f"threads_b{b}"]
            targets.append(target(f"thread choice ({name}, batch {b}): worst excess over the other count (%)",
                                  round(100 * t["choice_worst_excess"], 1), f"<= {100 * THREAD_SLACK:g}",
                                  t["choice_worst_excess"] <= THREAD_SLACK))  # fmt: skip
    out = write_results(
        "latency",
        {
            "profile": str(profile_path),
            "profile_sha256": file_sha256(profile_path),
            "profile_created": profile.created,
            "profile_fingerprint": profile.fingerprint,
            "stale": stale,
            "rebuild": "lifelong profile --state-dir STATE (any v2 state; torch not needed for this benchmark)",
            "held_out_seed": args.seed,
            "latency_table_evals_per_s": rate,
            "sets": sets,
            "targets": targets,
        },
        out=args.out,
    )
    print(markdown_targets(targets))
    print(f"-> {out}")
    return out


if __name__ == "__main__":
    main()
