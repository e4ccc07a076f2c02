"""Benchmark: what fine-tuning a chosen subnet alone buys, per minute.

    .venv/bin/python benchmarks/finetune.py --checkpoint STATE/supernet/supernet.pt
    .venv/bin/python benchmarks/finetune.py --checkpoint ... --subnet NAME --budgets 60 120 300

Needs a trained supernet (``lifelong train``). For each budget (seconds of wall clock, 2 torch
threads) the subnet is taken from the supernet afresh, fine-tuned alone
(:func:`lifelong.train.finetune.finetune_subnet`: its learned quantizers kept, the supernet's training
split and augmentation, a cosine learning rate over the budget), its BN re-estimated, and its
top-1 measured on the validation split and on the 10k test set. The gain per minute is the
test top-1 gained over the budget in minutes. With ``--alone`` (``benchmarks/results/supernet.json``
by default) the result is compared with the same subnet trained alone for as many epochs as the
supernet, where that benchmark has it.

Writes ``benchmarks/results/finetune.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, markdown_targets, target, write_results  # noqa: E402

from lifelong.data.datasets import load_fashion_mnist  # noqa: E402
from lifelong.nn.checkpoint import load_checkpoint  # noqa: E402
from lifelong.nn.supernet import recalibrate_bn  # noqa: E402
from lifelong.persist.digest import file_sha256  # noqa: E402
from lifelong.train.evaluate import predict_logits, top1  # noqa: E402
from lifelong.train.finetune import FinetuneConfig, finetune_subnet  # noqa: E402
from lifelong.train.trainer import supernet_recipe, training_tensors  # noqa: E402

TUTORIAL = "c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--subnet", default=TUTORIAL)
    ap.add_argument("--budgets", type=float, nargs="+", default=[60.0, 120.0, 300.0])
    ap.add_argument(
        "--lrs", type=float, nargs="+", default=[FinetuneConfig().lr], help="peak learning rates, each a row per budget"
    )
    ap.add_argument("--alone", type=Path, default=RESULTS / "supernet.json")
    ap.add_argument("--name", default="finetune")
    args = ap.parse_args()
    torch.set_num_threads(2)
    ck = load_checkpoint(args.checkpoint)
    recipe = supernet_recipe(ck, args.checkpoint)
    model = ck.build()
    cfg = model.space.resolve(args.subnet)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    x_train, y_train = training_tensors(train, recipe)
    _, val = train.split(recipe.val_fraction, seed=recipe.seed)
    calib = train.split(recipe.val_fraction, seed=recipe.seed)[0].head(2000).as_float()
    x_val, y_val, x_test, y_test = val.as_float(), val.y, test.as_float(), test.y

    def measure(sub) -> dict[str, float]:
        return {
            "val_top1": top1(predict_logits(sub, x_val), y_val),
            "test_top1": top1(predict_logits(sub, x_test), y_test),
        }

    sub = model.get_subnet(cfg)
    recalibrate_bn(sub, torch.from_numpy(calib))
    rows = [{"seconds": 0.0, "steps": 0, **measure(sub)}]
    print(f"0 s: test {100 * rows[0]['test_top1']:.2f}%", flush=True)
    for lr in args.lrs:
        for budget in args.budgets:
            sub = model.get_subnet(cfg)
            recalibrate_bn(sub, torch.from_numpy(calib))
            r = finetune_subnet(sub, x_train, y_train, calib, FinetuneConfig(seconds=budget, lr=lr))
            rows.append({"seconds": r.seconds, "lr": lr, "steps": r.steps, **measure(sub)})
            print(f"lr {lr:g}, {budget:.0f} s: test {100 * rows[-1]['test_top1']:.2f}% ({r.steps} steps)", flush=True)
    base = rows[0]["test_top1"]
    for row in rows[1:]:
        row["gain_pt_per_minute"] = 100 * (row["test_top1"] - base) / (row["seconds"] / 60)
    alone = None
    if args.alone.is_file():
        doc = json.loads(args.alone.read_text())
        for entry in doc.get("standalone", {}).values():
            if entry.get("subnet") == str(cfg) and doc.get("checkpoint_sha256") == file_sha256(args.checkpoint):
                alone = entry["alone_top1"]
    best_5min = max((r for r in rows[1:] if r["seconds"] <= 310), key=lambda r: r["test_top1"], default=None)
    gap = None if alone is None or best_5min is None else alone - best_5min["test_top1"]
    targets = [
        target("fine-tuned <= 5 min: trained alone minus fine-tuned, test top-1 (pt)",
               None if gap is None else 100 * gap, "<= 0.3", gap is not None and gap <= 0.003),
    ]  # fmt: skip
    write_results(
        args.name,
        {
            "checkpoint": str(args.checkpoint),
            "checkpoint_sha256": file_sha256(args.checkpoint),
            "rebuild": "lifelong train (the supernet); benchmarks/supernet.py --checkpoint ... (the subnet alone)",
            "subnet": str(cfg),
            "recipe": recipe.to_dict(),
            "rows": rows,
            "best_within_5_min": best_5min,
            "alone_test_top1": alone,
            "mean_gain_pt_per_minute": float(np.mean([r["gain_pt_per_minute"] for r in rows[1:]])),
            "targets": targets,
        },
    )
    print(markdown_targets(targets))


if __name__ == "__main__":
    main()
