"""The ``lifelong`` command line.

Library errors become one-line messages and exit codes here and nowhere else. Commands that
need torch import it inside the command, so ``lifelong --help`` and the serving commands
stay light.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from lifelong.errors import LifelongError
from service.paths import default_checkpoint, resolve_state_dir

__all__ = ["cli", "main"]

logger = logging.getLogger(__name__)

PRESETS = {
    # A few minutes on 2 cores: the demo's supernet.
    "quick": {"epochs": 3, "warmup_epochs": 1, "int8_epochs": 1, "max_train_samples": 12000, "checkpoint_every": 20},
    # The benchmark's supernet (see benchmarks/supernet.py).
    "full": {},
}


def _setup_logging(state_dir: Path, name: str, verbose: bool) -> Path:
    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{name}.log"
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fh = logging.FileHandler(log_file)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(fh)
    sh = logging.StreamHandler(sys.stderr)
    sh.setLevel(logging.INFO if verbose else logging.WARNING)
    sh.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(sh)
    return log_file


class _Group(click.Group):
    """Turns library errors into one clean line and exit code 2."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except LifelongError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="lifelong")
def cli() -> None:
    """lifelong: keep the best quantized network deployed on an edge gateway.

    \b
    Example:
        lifelong train --preset quick
    """


@cli.command()
@click.option("--data", "data_spec", default=None, help="Fashion-MNIST IDX folder, image-class folders or a .npz file.")
@click.option(
    "--preset", type=click.Choice(sorted(PRESETS)), default="full", show_default=True, help="Training budget."
)
@click.option("--epochs", type=int, default=None, help="Override the number of epochs.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--max-samples", type=int, default=None, help="Train on at most this many samples.")
@click.option("--seed", type=int, default=None)
@click.option("--subnet", default=None, help="Train this one subnet alone (a baseline), not the supernet.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Checkpoint path [STATE/supernet/supernet.pt]."
)
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help="State directory.")
@click.option("--fresh", is_flag=True, help="Start over instead of resuming an unfinished checkpoint.")
@click.option("--threads", type=int, default=None, help="torch threads [all cores].")
@click.option("--no-eval", is_flag=True, help="Skip the evaluation printed at the end.")
@click.option("--json", "as_json", is_flag=True, help="Print the final evaluation as JSON.")
def train(
    data_spec: str | None,
    preset: str,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    max_samples: int | None,
    seed: int | None,
    subnet: str | None,
    out: Path | None,
    state_dir: Path | None,
    fresh: bool,
    threads: int | None,
    no_eval: bool,
    as_json: bool,
) -> None:
    """Train the weight-sharing + bit-sharing supernet, resuming if it was interrupted.

    Works under torchrun for data-parallel training on several processes or hosts.

    \b
    Examples:
        lifelong train --preset quick
        lifelong train --data /srv/images --epochs 12
        torchrun --nproc-per-node 2 -m service.cli train --preset full
    """
    import torch

    from lifelong.data import load_dataset, load_fashion_mnist
    from lifelong.train import TrainConfig, train_supernet, with_overrides

    state = resolve_state_dir(state_dir)
    log_file = _setup_logging(state, "train", verbose=False)
    if threads:
        torch.set_num_threads(threads)
    cfg = with_overrides(
        TrainConfig(**PRESETS[preset]),
        epochs=epochs, batch_size=batch_size, lr=lr, max_train_samples=max_samples, seed=seed, fixed_subnet=subnet,
    )  # fmt: skip
    if cfg.epochs <= cfg.warmup_epochs + cfg.int8_epochs:
        # keep every phase when the epochs were cut: a third each, the rest mixed precision
        third = cfg.epochs // 3
        cfg = with_overrides(cfg, warmup_epochs=third, int8_epochs=third)
    data = load_dataset(data_spec, split="train") if data_spec else load_fashion_mnist("train")
    ckpt = out or default_checkpoint(state)
    if fresh and ckpt.exists():
        ckpt.unlink()
    click.echo(f"training -> {ckpt} (log: {log_file})", err=True)
    result = train_supernet(data, ckpt, cfg)
    if no_eval or os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    report = _evaluate_named(ckpt, data_spec, ["largest:w32a32", "largest:w8a8", "smallest:w8a8", "smallest:w4a8"])
    _print_evals(report, as_json, header=f"trained in {result.seconds:.0f} s")


def _resolve_subnet(space: object, name: str) -> object:
    from lifelong.space import Precision

    base, _, prec = name.partition(":")
    if base in ("largest", "smallest"):
        p = None
        if prec:
            w, a = prec.lstrip("w").split("a")
            p = Precision(int(w), int(a))
        return getattr(space, base)(p)
    return space.parse(name)


def _evaluate_named(ckpt: Path, data_spec: str | None, names: list[str]) -> list[dict[str, object]]:
    from lifelong.checkpoint import load_checkpoint
    from lifelong.data import load_dataset, load_fashion_mnist
    from lifelong.evaluate import evaluate_subnet

    model = load_checkpoint(ckpt).build()
    train_data = load_dataset(data_spec, split="train") if data_spec else load_fashion_mnist("train")
    test = load_dataset(data_spec, split="test") if data_spec else load_fashion_mnist("test")
    calib = train_data.head(2000).as_float()
    rows = []
    for name in names:
        cfg = _resolve_subnet(model.space, name)
        ev, _ = evaluate_subnet(model, cfg, calib, test.as_float(), test.y)
        rows.append({"name": name, **ev.to_dict()})
    return rows


def _print_evals(rows: list[dict[str, object]], as_json: bool, header: str = "") -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if header:
        click.echo(header)
    click.echo(f"{'subnet':<16} {'top-1':>7} {'params':>9} {'MMACs':>7}  name")
    for r in rows:
        click.echo(f"{r['name']:<16} {100 * r['top1']:6.2f}% {r['params']:>9} {r['macs'] / 1e6:7.2f}  {r['subnet']}")


@cli.command("eval")
@click.argument("subnets", nargs=-1)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="[STATE/supernet/supernet.pt]")
@click.option("--data", "data_spec", default=None, help="Data with a test split [Fashion-MNIST].")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def eval_cmd(
    subnets: tuple[str, ...], checkpoint: Path | None, data_spec: str | None, state_dir: Path | None, as_json: bool
) -> None:
    """Top-1 of subnets on the test set, after BN re-calibration.

    SUBNETS are canonical names or largest[:wXaY] / smallest[:wXaY].

    \b
    Example:
        lifelong eval largest:w8a8 smallest:w4a8 s16w8a8_c24.ik3e3w8a8_c48.ck3w8a8_c96.ik5e4w8a8_hw8a8
    """
    ckpt = checkpoint or default_checkpoint(resolve_state_dir(state_dir))
    _print_evals(_evaluate_named(ckpt, data_spec, list(subnets) or ["largest", "smallest"]), as_json)


@cli.command()
@click.argument("subnet")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="[STATE/exports/SUBNET.onnx]")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="[STATE/supernet/supernet.pt]")
@click.option("--data", "data_spec", default=None, help="Data with train and test splits [Fashion-MNIST].")
@click.option("--calib", type=int, default=2000, show_default=True, help="Training images for BN re-calibration.")
@click.option("--parity-images", type=int, default=10000, show_default=True, help="Test images for the gate.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def export(
    subnet: str,
    out: Path | None,
    checkpoint: Path | None,
    data_spec: str | None,
    calib: int,
    parity_images: int,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Export a subnet to ONNX with its learned quantization, behind the parity gate.

    The model is written only if onnxruntime agrees with the torch subnet on the test images
    (top-1 agreement >= 99.5%, accuracy within 0.3 pt). SUBNET is a canonical name or
    largest[:wXaY] / smallest[:wXaY].

    \b
    Example:
        lifelong export largest:w8a8 --out /tmp/largest-w8a8.onnx
    """
    import torch

    from lifelong.checkpoint import file_sha256, load_checkpoint
    from lifelong.data import load_dataset, load_fashion_mnist
    from lifelong.export import export_subnet
    from lifelong.supernet import recalibrate_bn

    state = resolve_state_dir(state_dir)
    ckpt = checkpoint or default_checkpoint(state)
    model = load_checkpoint(ckpt).build()
    cfg = _resolve_subnet(model.space, subnet)
    train_data = load_dataset(data_spec, split="train") if data_spec else load_fashion_mnist("train")
    test = load_dataset(data_spec, split="test") if data_spec else load_fashion_mnist("test")
    sub = model.get_subnet(cfg)
    recalibrate_bn(sub, torch.from_numpy(train_data.head(calib).as_float()))
    sub.eval()
    target = out or state / "exports" / f"{cfg}.onnx"
    n = min(parity_images, len(test))
    report = export_subnet(sub, target, test.as_float()[:n], test.y[:n], checkpoint_sha256=file_sha256(ckpt))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    p = report.parity
    click.echo(f"exported {report.subnet}")
    click.echo(f"  -> {report.path} ({report.bytes} bytes)")
    click.echo(
        f"  parity on {p.images} images: agreement {100 * p.agreement:.2f}%, top-1 torch {100 * p.torch_top1:.2f}% "
        f"onnx {100 * p.onnx_top1:.2f}%"
    )


@cli.command()
@click.option("--sample", type=int, default=3, show_default=True, help="Also print this many random subnets.")
@click.option("--seed", type=int, default=0)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def space(sample: int, seed: int, as_json: bool) -> None:
    """Describe the search space: its choices, its exact size and a few random subnets.

    \b
    Example:
        lifelong space --sample 5
    """
    import numpy as np

    from lifelong.cost import subnet_cost
    from lifelong.space import SearchSpace

    s = SearchSpace()
    rng = np.random.default_rng(seed)
    named = [("largest", s.largest()), ("smallest", s.smallest())] + [
        (f"random{i}", s.sample(rng)) for i in range(sample)
    ]
    rows = []
    for label, cfg in named:
        c = subnet_cost(s, cfg)
        rows.append(
            {"label": label, "subnet": str(cfg), "params": c.params, "macs": c.macs, "weight_bytes": c.weight_bytes}
        )
    if as_json:
        click.echo(json.dumps({"size": s.size(), "config": s.config.to_dict(), "subnets": rows}, indent=2))
        return
    click.echo(f"search space: {s.describe()}; encoding length {s.encoding_length()}")
    for r in rows:
        click.echo(f"  {r['label']:<9} {r['macs'] / 1e6:6.2f} MMACs {r['params']:>8} params  {r['subnet']}")


def main() -> None:
    cli(prog_name="lifelong")


if __name__ == "__main__":
    main()
