"""The ``lifelong`` command line.

Library errors become one-line messages and exit codes here and nowhere else. Commands that
need torch import it inside the command, so ``lifelong --help`` and the serving commands
stay light.

This module holds the group and the model commands (train, eval, profile, space); the others
live beside it, one module per family, and are added to the group at the end:
:mod:`service.cli.export` (export, finetune), :mod:`service.cli.service` (serve and the daemon's clients: status, history, deploy,
rollback, predict), :mod:`service.cli.search` (search, front), :mod:`service.cli.predictor`,
:mod:`service.cli.policy`, :mod:`service.cli.demo`; :mod:`service.cli.common` has what they
share (logging, the client's options).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import click

from lifelong.errors import LifelongError
from service.cli.common import setup_logging
from service.state.paths import default_checkpoint, default_profile, resolve_state_dir

__all__ = ["cli", "main"]

logger = logging.getLogger(__name__)

PRESETS = {
    # The demo's supernet, within 4 minutes on 2 cores (12,000 images took 298 s, 9,000 264 s; the demo
    # fine-tunes its candidates alone afterwards, which is where their accuracy comes from).
    "quick": {"epochs": 3, "warmup_epochs": 1, "int8_epochs": 1, "max_train_samples": 7000, "checkpoint_every": 20},
    # The benchmark's supernet (see benchmarks/supernet.py).
    "full": {},
}


class _Group(click.Group):
    """Turns library errors into one clean line: exit code 1 when the daemon cannot be
    reached (stopped, or a stale socket), 2 for every other error."""

    def invoke(self, ctx: click.Context) -> object:
        from service.errors import DaemonUnreachable

        try:
            return super().invoke(ctx)
        except DaemonUnreachable as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
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
    "--init-from",
    type=click.Path(path_type=Path),
    default=None,
    help="Continue a trained supernet (mixed precision from the first step) into --out.",
)
@click.option(
    "--n-random", type=int, default=None, help="Random subnets per step besides the smallest (and the largest)."
)
@click.option(
    "--sandwich/--uniform",
    default=None,
    help="Train the largest on labels every step and distil the others from it, or sample subnets uniformly "
    "on labels [uniform].",
)
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
    init_from: Path | None,
    n_random: int | None,
    sandwich: bool | None,
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
        lifelong train --init-from supernet.pt --out supernet-2.pt --epochs 4 --n-random 3 --lr 0.03
        torchrun --nproc-per-node 2 -m service.cli.main train --preset full
    """
    import torch

    from lifelong.data.datasets import load_dataset, load_fashion_mnist
    from lifelong.train.trainer import TrainConfig, train_supernet, with_overrides

    state = resolve_state_dir(state_dir)
    log_file = setup_logging(state, "train", verbose=False)
    if threads:
        torch.set_num_threads(threads)
    cfg = with_overrides(
        TrainConfig(**PRESETS[preset]),
        epochs=epochs, batch_size=batch_size, lr=lr, max_train_samples=max_samples, seed=seed, fixed_subnet=subnet,
        n_random=n_random, sandwich=sandwich,
    )  # fmt: skip
    if init_from is not None:
        cfg = with_overrides(cfg, init_from=str(init_from), warmup_epochs=0, int8_epochs=0)
    elif cfg.epochs <= cfg.warmup_epochs + cfg.int8_epochs:
        # keep every phase when the epochs were cut: a third each, the rest mixed precision
        third = cfg.epochs // 3
        cfg = with_overrides(cfg, warmup_epochs=third, int8_epochs=third)
    data = load_dataset(data_spec, split="train") if data_spec else load_fashion_mnist("train")
    ckpt = out or default_checkpoint(state)
    if init_from is not None and ckpt.resolve() == init_from.resolve():
        raise click.UsageError(f"--out {ckpt} is the --init-from checkpoint; continue into another file")
    if fresh and ckpt.exists():
        ckpt.unlink()
    click.echo(f"training -> {ckpt} (log: {log_file})", err=True)
    result = train_supernet(data, ckpt, cfg)
    if no_eval or os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    report = _evaluate_named(ckpt, data_spec, ["largest:w32a32", "largest:w8a8", "smallest:w32a32", "smallest:w8a8"])
    _print_evals(report, as_json, header=f"trained in {result.seconds:.0f} s")


def _evaluate_named(ckpt: Path, data_spec: str | None, names: list[str]) -> list[dict[str, object]]:
    from lifelong.data.datasets import load_dataset, load_fashion_mnist
    from lifelong.nn.checkpoint import load_checkpoint
    from lifelong.train.evaluate import evaluate_subnet

    model = load_checkpoint(ckpt).build()
    train_data = load_dataset(data_spec, split="train") if data_spec else load_fashion_mnist("train")
    test = load_dataset(data_spec, split="test") if data_spec else load_fashion_mnist("test")
    calib = train_data.head(2000).as_float()
    rows = []
    for name in names:
        cfg = model.space.resolve(name)
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
        lifelong eval largest:w8a8 smallest:w8a8 c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8
    """
    ckpt = checkpoint or default_checkpoint(resolve_state_dir(state_dir))
    _print_evals(_evaluate_named(ckpt, data_spec, list(subnets) or ["largest", "smallest"]), as_json)


@cli.command()
@click.option("--threads", type=int, default=2, show_default=True, help="onnxruntime intra-op threads.")
@click.option("--check", is_flag=True, help="Only say whether the stored profile fits this device.")
@click.option("--fit-subnets", type=int, default=100, show_default=True, help="Subnets the correction is fitted on.")
@click.option("--check-subnets", type=int, default=50, show_default=True, help="Subnets the model is checked on.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="[STATE/profile/device.json]")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def profile(
    threads: int,
    check: bool,
    fit_subnets: int,
    check_subnets: int,
    out: Path | None,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Measure this device: onnxruntime latency of every block choice, then fit the latency model.

    Takes about two minutes on 2 cores. With --check, only compares the stored profile's
    fingerprint (CPU, cores, onnxruntime, threads) with this device; exit code 1 if stale.

    \b
    Example:
        lifelong profile --threads 2
        lifelong profile --check
    """
    import numpy as np

    from lifelong.device.latency import calibrate
    from lifelong.device.profile import DeviceProfile, device_fingerprint, profile_device
    from lifelong.space.config import SearchSpace

    path = out or default_profile(resolve_state_dir(state_dir))
    if check:
        stale = DeviceProfile.load(path).stale_reasons(device_fingerprint(threads))
        if as_json:
            click.echo(json.dumps({"profile": str(path), "stale": bool(stale), "reasons": stale}))
        else:
            click.echo(f"{path}: " + ("stale: " + "; ".join(stale) if stale else "fits this device"))
        if stale:
            raise SystemExit(1)
        return
    space = SearchSpace()
    prof = profile_device(space, threads=threads)
    checks = calibrate(prof, space, fit_subnets=fit_subnets, check_subnets=check_subnets)
    prof.save(path)
    summary = {
        "profile": str(path),
        "rows": len(prof.entries),
        "seconds": prof.seconds,
        "fingerprint": prof.fingerprint,
        "latency_model": {
            str(c.batch): {k: v for k, v in c.to_dict().items() if k.endswith("error") or k == "within_10pct"}
            for c in checks
        },
        "int8_slower_than_fp32": {str(b): len(prof.int8_slower(b)) for b in prof.batches},
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"profiled {summary['rows']} block choices in {prof.seconds:.0f} s -> {path}")
    for c in checks:
        click.echo(
            f"  latency model at batch {c.batch}: {100 * c.within_10pct:.0f}% of {len(c.subnets)} subnets within +-10% "
            f"(median error {100 * float(np.median(np.abs(c.rel_errors))):.1f}%)"
        )
    w8 = sum(1 for k in prof.entries if k.endswith(":w8a8"))
    for b in prof.batches:
        slow = prof.int8_slower(b)
        click.echo(f"  batch {b}: W8A8 slower than FP32 for {len(slow)} of {w8} block choices")
        for key, fp, q in sorted(slow, key=lambda r: r[2] / max(r[1], 1e-9), reverse=True)[:3]:
            click.echo(f"    {key}: fp32 {fp:.3f} ms, int8 {q:.3f} ms")


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

    from lifelong.space.config import SearchSpace
    from lifelong.space.cost import subnet_cost

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


from service.cli.demo import demo  # noqa: E402  (the demo has its own module)
from service.cli.export import export, finetune  # noqa: E402  (the ONNX file commands have their own module)
from service.cli.policy import policy  # noqa: E402  (the policy commands have their own module)
from service.cli.predictor import predictor  # noqa: E402  (the predictor commands have their own module)
from service.cli.search import front, search  # noqa: E402  (the search commands have their own module)
from service.cli.service import deploy, history, predict, rollback, serve, status  # noqa: E402  (the daemon's)

cli.add_command(export)
cli.add_command(finetune)
cli.add_command(search)
cli.add_command(front)
cli.add_command(predictor)
cli.add_command(demo)
cli.add_command(policy)
for _command in (serve, status, history, deploy, rollback, predict):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="lifelong")


if __name__ == "__main__":
    main()
