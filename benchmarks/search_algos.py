"""Benchmark: NSGA-II against random search and regularised evolution at equal evaluations.

    .venv/bin/python benchmarks/search_algos.py                      # the state's predictor and profile
    .venv/bin/python benchmarks/search_algos.py --evaluations 20000 --seeds 5 --policy low-latency

Needs an accuracy predictor (``lifelong predictor build``; default
``STATE/predictor/predictor.npz``) and a device profile (``lifelong profile``; default
``STATE/profile/device.json``). Writes ``benchmarks/results/search_algos.json``:

- the inputs (paths, SHA-256, the predictor's notes, the profile's device fingerprint) and
  the policy whose budgets constrain every algorithm;
- the evaluator's throughput (predictor + latency model; the issue asks >= 20k/s on 2 cores);
- per algorithm and seed, the hypervolume of its front in the accuracy/latency plane at one
  fixed reference point (``lifelong.search.reference.reference_point``), its evaluations, front
  size and wall time; the mean and standard deviation over the seeds;
- targets: NSGA-II's mean hypervolume at least that of each baseline, and the throughput.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_targets, target, write_results  # noqa: E402
from search_baselines import compare_algorithms  # noqa: E402

from lifelong.device.latency_table import LatencyTable  # noqa: E402
from lifelong.device.profile import DeviceProfile  # noqa: E402
from lifelong.search.evaluator import Constraints, PredictorEvaluator, measure_throughput  # noqa: E402
from lifelong.search.front_search import file_sha256, space_for_predictor, space_hash  # noqa: E402
from policies import policy_to_dict  # noqa: E402
from service.cli.search import resolve_policy  # noqa: E402
from service.state.paths import default_predictor, default_profile, resolve_state_dir  # noqa: E402

THROUGHPUT_TARGET = 20_000


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictor", type=Path, default=None, help="[STATE/predictor/predictor.npz]")
    ap.add_argument("--profile", type=Path, default=None, help="[STATE/profile/device.json]")
    ap.add_argument("--policy", default="balanced", help="Preset name or policy file whose budgets apply [balanced].")
    ap.add_argument("--evaluations", type=int, default=10_000, help="Candidate evaluations per run [10000].")
    ap.add_argument("--seeds", type=int, default=5, help="Runs per algorithm, seeds 0..N-1 [5].")
    ap.add_argument("--population", type=int, default=100, help="NSGA-II and evolution population [100].")
    ap.add_argument("--throughput-subnets", type=int, default=10_000, help="Subnets timed for throughput [10000].")
    ap.add_argument("--state-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="[benchmarks/results/search_algos.json]")
    args = ap.parse_args(argv)

    from lifelong.predictor.mlp import AccuracyPredictor

    state = resolve_state_dir(args.state_dir)
    predictor_path = args.predictor or default_predictor(state)
    profile_path = args.profile or default_profile(state)
    predictor = AccuracyPredictor.load(predictor_path)
    profile = DeviceProfile.load(profile_path)
    policy, source = resolve_policy(args.policy)
    space = space_for_predictor(predictor)
    constraints = Constraints.from_policy(policy)
    evaluator = PredictorEvaluator(predictor, LatencyTable(profile, space), batch=constraints.batch)

    rng = np.random.default_rng(0)
    throughput = measure_throughput(
        evaluator, [space.sample(rng) for _ in range(args.throughput_subnets)], batch=1000, repeats=3
    )
    print(f"evaluator: {throughput['evaluations_per_s']:,.0f} evaluations/s", flush=True)

    def report(name: str, seed: int, r: object) -> None:
        print(f"  {name} seed {seed}: {r.evaluations} evaluations, front {len(r.front)}, {r.seconds:.1f} s", flush=True)

    comparison = compare_algorithms(
        space, evaluator, constraints,
        evaluations=args.evaluations, seeds=range(args.seeds), population=args.population, progress=report,
    )  # fmt: skip
    scores = comparison.scores
    nsga = scores["nsga2"].mean
    targets = [
        target(
            f"nsga2 hypervolume >= {other.replace('_', ' ')}'s (ratio, mean over {args.seeds} seeds)",
            nsga / scores[other].mean if scores[other].mean > 0 else None,
            ">= 1",
            nsga >= scores[other].mean,
        )
        for other in ("random_search", "regularized_evolution")
    ]
    targets.append(
        target(
            "evaluator throughput (predictor + latency model), evaluations/s",
            throughput["evaluations_per_s"],
            f">= {THROUGHPUT_TARGET}",
            throughput["evaluations_per_s"] >= THROUGHPUT_TARGET,
        )
    )
    payload = {
        "inputs": {
            "predictor": str(predictor_path),
            "predictor_sha256": file_sha256(predictor_path),
            "predictor_meta": predictor.meta,
            "profile": str(profile_path),
            "profile_sha256": file_sha256(profile_path),
            "profile_fingerprint": profile.fingerprint,
            "space": space.describe(),
            "space_hash": space_hash(space),
        },
        "policy": {"source": source, **policy_to_dict(policy)},
        "throughput": throughput,
        "comparison": comparison.to_dict(),
        "targets": targets,
    }
    out = write_results("search_algos", payload, out=args.out)
    for name, s in scores.items():
        print(f"{name:>22}: hypervolume {s.mean:.5g} +- {s.std:.2g} ({s.evaluations_per_s:,.0f} evaluations/s)")
    print(markdown_targets(targets))
    print(f"-> {out}")
    return out


if __name__ == "__main__":
    main()
