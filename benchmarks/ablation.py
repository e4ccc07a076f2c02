"""Benchmark: ablation rows of the supernet recipe at a reduced budget, side by side.

    .venv/bin/python benchmarks/ablation.py                         # every row, 3 epochs, 2 at a time
    .venv/bin/python benchmarks/ablation.py --rows baseline,n_random4 --epochs 3
    .venv/bin/python benchmarks/ablation.py --quick                 # minutes, same code path

Each row is :class:`lifelong.train.trainer.TrainConfig` with the fields of the table ``ROWS`` below
set (each names the recipe it starts from, so a row keeps its meaning when the defaults
change), trained from scratch for ``--epochs`` (one warm-up, one INT8 epoch, the
rest mixed) on the training split. Rows run ``--parallel`` at a time as separate processes with
one torch thread each, so that rows compared in one run share the machine alike; a row's
checkpoint and result are kept under ``benchmarks/work/ablation/`` and a rerun resumes or reuses
them. Row ``alone`` is the tutorial CNN trained alone with the baseline recipe for as many
epochs: the reference for the weight-sharing gap at this budget.

Each row is measured as the supernet benchmark does (top-1 on the 10k test set after BN
re-calibration on 2,000 training images, W8A8): largest, smallest, the tutorial CNN's member and
the six random subnets of ``benchmarks/supernet.py``. Nothing here needs a prebuilt state: the
rows train themselves.

Writes ``benchmarks/results/ablation.json`` (``ablation-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_targets, target, write_results  # noqa: E402

SANDWICH = {"sandwich": True, "n_random": 2}
"""The recipe before uniform sampling: rows name every field they rely on, so that a row means
the same training after the defaults change."""
UNIFORM = {"sandwich": False, "n_random": 12}
"""The default recipe since this ablation (``TrainConfig()``)."""

ROWS: dict[str, dict] = {
    "baseline": SANDWICH,
    "n_random4": {**SANDWICH, "n_random": 4},
    "student_label0.5": {**SANDWICH, "student_label": 0.5},
    "regularise_largest": {**SANDWICH, "dropout": 0.1, "label_smoothing": 0.1},
    "lr_floor0.05": {**SANDWICH, "lr_floor": 0.05},
    "fp32_autocast_off": {**SANDWICH, "bf16": False},
    "uniform_labels4": {"sandwich": False, "n_random": 4},
    "uniform_labels12": UNIFORM,  # about the baseline's compute per step
    "uniform12_lr_floor0.05": {**UNIFORM, "lr_floor": 0.05},
    "uniform12_fp32_autocast_off": {**UNIFORM, "bf16": False},
}
ALONE = "alone"
WORK = Path(__file__).resolve().parent / "work" / "ablation"


def _row_config(row: str, epochs: int, quick: bool):
    from lifelong.train.trainer import TrainConfig

    base = {"epochs": epochs, "warmup_epochs": 1, "int8_epochs": 1 if epochs > 2 else 0}
    if quick:
        base.update(max_train_samples=3000, checkpoint_every=20)
    if row == ALONE:
        from supernet import TUTORIAL

        return TrainConfig(**base, **SANDWICH, fixed_subnet=TUTORIAL)  # the fields a subnet alone ignores
    return TrainConfig(**base, **ROWS[row])


def _row_epochs(name: str, epochs: int) -> tuple[str, int]:
    """``ROW@E`` -> (ROW, E): a row at its own number of epochs (rows compared at equal compute
    train for different numbers of epochs); ``ROW`` -> (ROW, ``epochs``)."""
    row, at, e = name.partition("@")
    if not at:
        return row, epochs
    if not e.isdigit() or int(e) < 1:
        raise SystemExit(f"row {name!r}: expected ROW@EPOCHS with EPOCHS a whole number >= 1")
    return row, int(e)


def run_row(row: str, epochs: int, quick: bool) -> dict:
    """Train one row (resuming) and measure it; the result is also written beside the checkpoint."""
    import torch
    from supernet import N_RANDOM, TUTORIAL, _random_subnets

    from lifelong.data.datasets import load_fashion_mnist
    from lifelong.nn.checkpoint import load_checkpoint
    from lifelong.persist.digest import file_sha256
    from lifelong.space.config import Precision
    from lifelong.train.evaluate import evaluate_subnet
    from lifelong.train.trainer import train_supernet

    torch.set_num_threads(1)
    row, epochs = _row_epochs(row, epochs)
    cfg = _row_config(row, epochs, quick)
    tag = f"{row}-e{epochs}{'-quick' if quick else ''}"
    WORK.mkdir(parents=True, exist_ok=True)
    done = WORK / f"{tag}.json"
    if done.is_file() and (WORK / f"{tag}.pt").is_file():
        prev = json.loads(done.read_text())
        if prev.get("config") == cfg.to_dict() and prev.get("checkpoint_sha256") == file_sha256(WORK / f"{tag}.pt"):
            return prev  # measured already, on this very checkpoint
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    if quick:
        test = test.head(1000)
    ckpt = WORK / f"{tag}.pt"
    if ckpt.is_file() and load_checkpoint(ckpt).train.get("config") != cfg.to_json():
        raise SystemExit(f"{ckpt} was trained with another config than row {row!r} has now; remove it to retrain")
    res = train_supernet(train, ckpt, cfg, progress=False)
    model = load_checkpoint(res.checkpoint).build()
    space = model.space
    calib = train.split(cfg.val_fraction, seed=cfg.seed)[0].head(2000).as_float()
    w8a8 = Precision(8, 8)
    plan = {"tutorial": space.parse(TUTORIAL)}
    if row != ALONE:
        plan = {"largest": space.largest(w8a8), "smallest": space.smallest(w8a8), **plan}
        plan.update({f"random{i}": r for i, r in enumerate(_random_subnets(space, N_RANDOM, 30e6))})
    top1 = {}
    for label, sub in plan.items():
        e, _ = evaluate_subnet(model, sub, calib, test.as_float(), test.y)
        top1[label] = e.top1
    steps = int(load_checkpoint(res.checkpoint).train["step"])
    out = {
        "row": row,
        "epochs": epochs,
        "config": cfg.to_dict(),
        "checkpoint_sha256": file_sha256(res.checkpoint),
        "train_seconds": res.seconds,
        "steps": steps,
        "seconds_per_step": res.seconds / max(1, steps),
        "top1": top1,
    }
    if row != ALONE:
        out["random_mean"] = float(np.mean([v for k, v in top1.items() if k.startswith("random")]))
    done.write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join([*ROWS, ALONE]), help="comma-separated rows of ROWS, and 'alone'")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=2, help="rows trained at once (one torch thread each)")
    ap.add_argument("--quick", action="store_true", help="3,000 training images, 1,000 test images")
    ap.add_argument("--name", default="ablation", help="results name: benchmarks/results/NAME.json")
    ap.add_argument("--row", help=argparse.SUPPRESS)  # a worker process: train and measure one row
    args = ap.parse_args()
    if args.row:
        print(json.dumps(run_row(args.row, args.epochs, args.quick)))
        return
    rows = [r for r in args.rows.split(",") if r]
    unknown = [
        r for r in rows if _row_epochs(r, args.epochs)[0] not in ROWS and _row_epochs(r, args.epochs)[0] != ALONE
    ]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; expected some of {[*ROWS, ALONE]}")
    t0 = time.monotonic()
    results: dict[str, dict] = {}
    pending = list(rows)
    running: dict[str, subprocess.Popen] = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            row = pending.pop(0)
            cmd = [sys.executable, __file__, "--row", row, "--epochs", str(args.epochs)] + (
                ["--quick"] if args.quick else []
            )
            running[row] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            print(f"started {row}", flush=True)
        time.sleep(2)
        for row, proc in list(running.items()):
            if proc.poll() is None:
                continue
            out = proc.stdout.read() if proc.stdout else ""
            del running[row]
            if proc.returncode != 0:
                raise SystemExit(f"row {row} failed with exit code {proc.returncode}")
            results[row] = json.loads(out.strip().splitlines()[-1])
            r = results[row]
            print(f"{row:<20} " + " ".join(f"{k} {100 * v:.2f}" for k, v in r["top1"].items()), flush=True)
    alone_by_epochs = {r["epochs"]: r["top1"]["tutorial"] for r in results.values() if r["row"] == ALONE}
    alone = alone_by_epochs.get(args.epochs)
    table = []
    for row in rows:
        name, epochs = _row_epochs(row, args.epochs)
        if name == ALONE:
            continue
        r = results[row]
        t = r["top1"]
        at = alone_by_epochs.get(epochs)  # the tutorial alone for as many epochs
        table.append({
            "row": row,
            "epochs": epochs,
            "changes": ROWS[name],
            "largest": t["largest"],
            "smallest": t["smallest"],
            "tutorial": t["tutorial"],
            "tutorial_gap": None if at is None else at - t["tutorial"],
            "random_mean": r["random_mean"],
            "seconds_per_step": r["seconds_per_step"],
            "train_seconds": r["train_seconds"],
        })  # fmt: skip
    # each row against the row named baseline, else the first row
    base = next((t for t in table if t["row"] == "baseline"), table[0] if table else None)
    targets = []
    for t in table:
        if base is None or t is base:
            continue
        gain = t["random_mean"] - base["random_mean"]
        targets.append(
            target(f"{t['row']}: random-subnet mean top-1 minus {base['row']}'s (pt)", 100 * gain, "> 0", gain > 0)
        )
    lines = [
        "| row | epochs | largest | smallest | tutorial | gap to alone | 6 random mean | s/step | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        gap = "-" if t["tutorial_gap"] is None else f"{100 * t['tutorial_gap']:.2f}"
        lines.append(
            f"| {t['row']} | {t['epochs']} | {100 * t['largest']:.2f} | {100 * t['smallest']:.2f} | "
            f"{100 * t['tutorial']:.2f} | {gap} | {100 * t['random_mean']:.2f} | {t['seconds_per_step']:.3f} | "
            f"{t['train_seconds']:.0f} |"
        )
    print("\n".join(lines))
    print(markdown_targets(targets))
    name = f"{args.name}-quick" if args.quick else args.name
    write_results(
        name,
        {
            "epochs": args.epochs,
            "parallel": args.parallel,
            "rebuild": "nothing: each row trains itself (checkpoints kept in benchmarks/work/ablation/)",
            "alone_tutorial": alone,
            "alone_tutorial_by_epochs": alone_by_epochs,
            "rows": results,
            "table": table,
            "wall_seconds": time.monotonic() - t0,
            "targets": targets,
        },
    )
    print(f"wrote benchmarks/results/{name}.json")


if __name__ == "__main__":
    main()
