"""Benchmark: the supernet's subnets against the same subnets trained alone.

    .venv/bin/python benchmarks/supernet.py                       # train the supernet (~50 min), evaluate,
                                                                  # train 7 subnets alone (~35 min)
    .venv/bin/python benchmarks/supernet.py --checkpoint STATE/supernet/supernet.pt
                                                                  # evaluate a supernet trained by `lifelong train`
    .venv/bin/python benchmarks/supernet.py --quick               # a few minutes, same code path
    .venv/bin/python benchmarks/supernet.py --checkpoint CKPT --alone-only
                                                                  # only the 7 subnets alone (the supernet
                                                                  # may still be training: its recipe is known)
    .venv/bin/python benchmarks/supernet.py --checkpoint CKPT --alone-from benchmarks/results/supernet.json
                                                                  # reuse the subnets trained alone of an earlier
                                                                  # result where the recipe digest matches

Rebuilding what it needs: without ``--checkpoint`` it trains the default supernet itself into
``benchmarks/work/supernet/`` (resumable); ``lifelong train --state-dir DIR`` makes the same
checkpoint. The result records the checkpoint's SHA-256, its training config and wall time.

Writes ``benchmarks/results/supernet.json`` (or ``supernet-quick.json``): top-1 on the 10k test
set after BN re-calibration on 2,000 training images, for the largest and smallest subnets and
the tutorial CNN's member (``c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8``) at W8A8 and FP32,
and six random W8A8 subnets; then each of those seven trained alone with the supernet's
recipe for as many epochs (:func:`lifelong.train.trainer.supernet_recipe`), and the gaps. A subnet
trained alone does not depend on the supernet's weights nor on how the supernet samples its
subnets (:data:`SUPERNET_ONLY_KEYS`), so it is kept in ``benchmarks/work/supernet/`` under the
digest of its own training config and reused by every supernet of the same recipe. The random
subnets are drawn uniformly among those of at most ``--max-alone-mmacs`` MMACs (the region the
front lives in; bigger ones take too long to train alone here): the draw is recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_targets, target, write_results  # noqa: E402

from lifelong.data.datasets import load_fashion_mnist  # noqa: E402
from lifelong.nn.checkpoint import load_checkpoint  # noqa: E402
from lifelong.persist.digest import file_sha256  # noqa: E402
from lifelong.space.config import Precision, SearchSpace  # noqa: E402
from lifelong.space.cost import subnet_cost  # noqa: E402
from lifelong.train.evaluate import evaluate_subnet  # noqa: E402
from lifelong.train.trainer import TrainConfig, supernet_recipe, train_supernet  # noqa: E402

W8A8, FP32 = Precision(8, 8), Precision(32, 32)
TUTORIAL = "c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8"
N_RANDOM = 6


SUPERNET_ONLY_KEYS = ("sandwich", "n_random", "student_label")
"""How the supernet draws and teaches its subnets each step: no effect on a subnet trained alone."""


def alone_config(cfg: TrainConfig, arch: object) -> TrainConfig:
    """The config that trains ``arch`` alone with ``cfg``'s recipe (supernet-only keys at their defaults)."""
    default = TrainConfig()
    d = {**cfg.to_dict(), "fixed_subnet": str(arch), "init_from": None}
    d.update({k: getattr(default, k) for k in SUPERNET_ONLY_KEYS})
    return TrainConfig(**d)


def _random_subnets(space: SearchSpace, n: int, max_macs: float, seed: int = 2026) -> list:
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        cfg = space.sample(rng, (W8A8,))
        if subnet_cost(space, cfg).macs <= max_macs and cfg not in out:
            out.append(cfg)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny run to check the pipeline")
    ap.add_argument("--checkpoint", type=Path, default=None, help="evaluate this trained supernet")
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work")
    ap.add_argument("--no-standalone", action="store_true", help="skip training subnets alone")
    ap.add_argument("--alone-only", action="store_true", help="only train the subnets alone (cached), then stop")
    ap.add_argument("--max-alone-mmacs", type=float, default=30.0)
    ap.add_argument(
        "--alone-from",
        type=Path,
        default=None,
        metavar="RESULTS",
        help="reuse the subnets trained alone of an earlier supernet.json whose recipe digest matches",
    )
    args = ap.parse_args()
    name = "supernet-quick" if args.quick else "supernet"
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    train = load_fashion_mnist("train")
    test = load_fashion_mnist("test")

    if args.checkpoint is not None:
        ckpt_path = args.checkpoint
        ck = load_checkpoint(ckpt_path)
        if not ck.complete and not args.alone_only:
            raise SystemExit(f"{ckpt_path} is an unfinished training; finish it with `lifelong train` first")
        cfg = supernet_recipe(ck, ckpt_path)
        train_seconds, record = float(ck.train.get("seconds", 0.0)), ck.record
    else:
        cfg = TrainConfig()
        if args.quick:
            cfg = TrainConfig(epochs=3, warmup_epochs=1, int8_epochs=1, max_train_samples=4000, checkpoint_every=20)
        ckpt_path = work / "supernet.pt"
        result = train_supernet(train, ckpt_path, cfg)
        train_seconds, record = result.seconds, result.record  # across interruptions
    if args.quick:
        test = test.head(2000)
    calib = train.split(cfg.val_fraction, seed=cfg.seed)[0].head(2000).as_float()
    if args.alone_only:
        space = SearchSpace(load_checkpoint(ckpt_path).space)
        plan = {"tutorial_w8a8": space.parse(TUTORIAL)}
        plan |= {
            f"random{i}_w8a8": r for i, r in enumerate(_random_subnets(space, N_RANDOM, args.max_alone_mmacs * 1e6))
        }
        for label, arch in plan.items():
            path = _train_alone(train, work, cfg, label, arch)[0]
            e, _ = evaluate_subnet(load_checkpoint(path).build(), arch, calib, test.as_float(), test.y)
            print(f"alone {label:<14} {100 * e.top1:6.2f}%  {path.name}", flush=True)
        return
    x_test, y_test = test.as_float(), test.y
    sha = file_sha256(ckpt_path)
    t_eval = time.monotonic()
    model = load_checkpoint(ckpt_path).build()
    space: SearchSpace = model.space

    evals: dict[str, dict] = {}

    def ev(label: str, sub_cfg) -> dict:
        e, _ = evaluate_subnet(model, sub_cfg, calib, x_test, y_test)
        evals[label] = e.to_dict()
        print(f"{label:<16} {100 * e.top1:6.2f}%  {e.macs / 1e6:7.2f} MMACs  {e.subnet}", flush=True)
        return evals[label]

    tutorial = space.parse(TUTORIAL)
    randoms = _random_subnets(space, N_RANDOM, args.max_alone_mmacs * 1e6)
    plan = {"tutorial_w8a8": tutorial, **{f"random{i}_w8a8": r for i, r in enumerate(randoms)}}
    for label, sub in (("largest", space.largest()), ("smallest", space.smallest()), ("tutorial", tutorial)):
        ev(f"{label}_fp32", sub.with_precision(FP32))
        ev(f"{label}_w8a8", sub.with_precision(W8A8))
    for label, sub in plan.items():
        if label not in evals:
            ev(label, sub)
    eval_seconds = time.monotonic() - t_eval

    def finish(standalone: dict) -> list[dict]:
        largest = evals["largest_w8a8"]["top1"]
        targets = [
            target("largest W8A8 top-1 (%)", 100 * largest, ">= 93.5", largest >= 0.935),
            target("supernet training wall time (min)", train_seconds / 60, "<= 60", train_seconds <= 3600),
        ]
        gaps = {k: v["alone_top1"] - v["supernet_top1"] for k, v in standalone.items()}
        tut = gaps.get("tutorial_w8a8")
        targets.append(
            target("tutorial CNN member W8A8: trained alone minus in supernet (pt)",
                   None if tut is None else 100 * tut, "<= 0.5", tut is not None and tut <= 0.005)
        )  # fmt: skip
        rand = [g for k, g in gaps.items() if k.startswith("random")]
        done = len(rand) == N_RANDOM
        mean, worst = (float(np.mean(rand)), float(np.max(rand))) if rand else (None, None)
        targets.append(
            target(f"{N_RANDOM} random W8A8 subnets: mean gap alone minus in supernet (pt)",
                   None if mean is None else 100 * mean, "<= 1.0", done and mean <= 0.01)
        )  # fmt: skip
        targets.append(
            target(f"{N_RANDOM} random W8A8 subnets: worst gap (pt)",
                   None if worst is None else 100 * worst, "<= 1.5", done and worst <= 0.015)
        )  # fmt: skip
        write_results(
            name,
            {
                "checkpoint": str(ckpt_path),
                "checkpoint_sha256": sha,
                "rebuild": "lifelong train --state-dir DIR (or this script without --checkpoint)",
                "train_config": cfg.to_dict(),
                "space": space.describe(),
                "train_record": record,
                "train_seconds": train_seconds,
                "eval_seconds": eval_seconds,
                "calibration_images": len(calib),
                "test_images": len(y_test),
                "evals": evals,
                "alone_draw": f"{N_RANDOM} uniform W8A8 draws (seed 2026) of at most {args.max_alone_mmacs} MMACs",
                "standalone": standalone,
                "targets": targets,
            },
        )
        return targets

    earlier = _earlier_alone(args.alone_from, cfg, plan) if args.alone_from else {}  # read before it is rewritten
    standalone: dict = {}
    targets = finish(standalone)  # written now, rewritten after each subnet trained alone
    if not args.no_standalone:
        for label, arch in plan.items():
            if label in earlier:
                standalone[label] = earlier[label] | {"supernet_top1": evals[label]["top1"]}
                print(f"alone {label:<14} {100 * standalone[label]['alone_top1']:6.2f}% (reused from "
                      f"{args.alone_from}; in supernet {100 * evals[label]['top1']:.2f}%)", flush=True)  # fmt: skip
                targets = finish(standalone)
                continue
            path, seconds = _train_alone(train, work, cfg, label, arch)
            alone = load_checkpoint(path).build()
            e, _ = evaluate_subnet(alone, arch, calib, x_test, y_test)
            standalone[label] = {
                "subnet": str(arch),
                "alone_top1": e.top1,
                "supernet_top1": evals[label]["top1"],
                "macs": e.macs,
                "train_seconds": seconds,
                "checkpoint": path.name,
            }
            print(f"alone {label:<14} {100 * e.top1:6.2f}% (in supernet {100 * evals[label]['top1']:.2f}%)", flush=True)
            targets = finish(standalone)
    print(markdown_targets(targets))
    print(f"wrote benchmarks/results/{name}.json")


def _alone_name(cfg: TrainConfig, label: str, arch: object) -> str:
    """The file name of ``arch`` trained alone with ``cfg``'s recipe: keyed by that config's digest."""
    return f"alone-{hashlib.sha256(alone_config(cfg, arch).to_json().encode()).hexdigest()[:12]}-{label}.pt"


def _earlier_alone(path: Path, cfg: TrainConfig, plan: dict) -> dict[str, dict]:
    """The standalone entries of an earlier result that trained the same subnets with the same
    recipe (same config digest in the checkpoint name), marked with where they come from.

    A subnet trained alone depends on neither the supernet's weights nor its sampling
    (:data:`SUPERNET_ONLY_KEYS`), so an earlier run's figure measures the same thing; the
    machine it ran on is recorded with it."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--alone-from {path}: cannot read an earlier supernet result (JSON): {exc}") from exc
    out = {}
    for label, arch in plan.items():
        e = (earlier.get("standalone") or {}).get(label)
        if e and e.get("checkpoint") == _alone_name(cfg, label, arch) and e.get("subnet") == str(arch):
            out[label] = {k: v for k, v in e.items() if k != "supernet_top1"} | {
                "reused_from": {"file": str(path), "finished": earlier.get("finished"), "machine": earlier.get("machine"),
                                "supernet_sha256": earlier.get("checkpoint_sha256")}
            }  # fmt: skip
    missing = [label for label in plan if label not in out]
    if missing:
        print(f"--alone-from {path}: no matching recipe for {', '.join(missing)}: trained here", flush=True)
    return out


def _train_alone(train: object, work: Path, cfg: TrainConfig, label: str, arch: object) -> tuple[Path, float]:
    """Train ``arch`` alone with ``cfg``'s recipe, or find it trained: its checkpoint and training seconds."""
    path = work / _alone_name(cfg, label, arch)
    r = train_supernet(train, path, alone_config(cfg, arch))
    return path, float(r.seconds or load_checkpoint(path).train.get("seconds", 0.0))


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
