"""``lifelong export`` and ``lifelong finetune``: a subnet of the trained supernet as an ONNX file,
behind the parity gate, timed on this device when the state has a profile.

Registered on the ``lifelong`` group by :mod:`service.cli.main`, whose group turns library errors
into one-line messages. Both import torch inside the command, never at import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lifelong.errors import LifelongError
from service.state.paths import default_checkpoint, default_profile, resolve_state_dir

if TYPE_CHECKING:
    from lifelong.deploy.export import ExportReport
    from lifelong.device.profile import DeviceProfile

__all__ = ["export", "finetune"]


@click.command()
@click.argument("subnet")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="[STATE/exports/SUBNET.onnx]")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="[STATE/supernet/supernet.pt]")
@click.option("--data", "data_spec", default=None, help="Data with train and test splits [Fashion-MNIST].")
@click.option("--calib", type=int, default=2000, show_default=True, help="Training images for BN re-calibration.")
@click.option("--parity-images", type=int, default=10000, show_default=True, help="Test images for the gate.")
@click.option("--exact", is_flag=True, help="Do not try the requantized (integer-kernel) form first.")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def export(
    subnet: str,
    out: Path | None,
    checkpoint: Path | None,
    data_spec: str | None,
    calib: int,
    parity_images: int,
    exact: bool,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Export a subnet to ONNX with its learned quantization, behind the parity gate.

    The model is written only if onnxruntime agrees with the torch subnet on the test images
    (top-1 agreement >= 99.5%, accuracy within 0.3 pt). SUBNET is a canonical name or
    largest[:wXaY] / smallest[:wXaY]. The requantized form, in which every 8-bit layer runs
    as an integer kernel, is tried first and kept if it passes the gate (--exact skips it).
    With a device profile in the state, the file is then timed here with 1 and 2 onnxruntime
    threads and the faster count per batch size is written into its metadata.

    \b
    Example:
        lifelong export largest:w8a8 --out /tmp/largest-w8a8.onnx
    """
    from lifelong.data.datasets import load_dataset, load_fashion_mnist
    from lifelong.jobs.export import export_from_checkpoint

    state = resolve_state_dir(state_dir)
    ckpt = checkpoint or default_checkpoint(state)
    train_data = load_dataset(data_spec, split="train") if data_spec else load_fashion_mnist("train")
    test = load_dataset(data_spec, split="test") if data_spec else load_fashion_mnist("test")
    report = export_from_checkpoint(
        ckpt,
        subnet,
        out,
        out_dir=state / "exports",
        calibration=train_data.head(calib).as_float(),
        test=test,
        parity_images=parity_images,
        exact=exact,
        timing=_export_timing(state),
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    form = "requantized: integer kernels" if report.requantized else "exact"
    if report.requant_parity is not None and not report.requantized:
        form += f" (requantized form failed the gate: agreement {100 * report.requant_parity.agreement:.2f}%)"
    click.echo(f"exported {report.subnet} [{form}]")
    _echo_file(report)


def _export_timing(state: Path) -> DeviceProfile | None:
    """The state's device profile, to time an exported file with and record its thread choice
    (None, with a warning, when there is none or it cannot be read: the file is then not timed)."""
    from lifelong.device.profile import DeviceProfile

    if not default_profile(state).is_file():
        return None
    try:
        return DeviceProfile.load(default_profile(state))
    except LifelongError as exc:
        click.echo(f"warning: the model is not timed: {exc}", err=True)
        return None


def _echo_file(report: ExportReport) -> None:
    """Where the file went, what the parity gate measured, and the thread count chosen per batch."""
    p = report.parity
    click.echo(f"  -> {report.path} ({report.bytes} bytes)")
    click.echo(
        f"  parity on {p.images} images: agreement {100 * p.agreement:.2f}%, top-1 torch {100 * p.torch_top1:.2f}% "
        f"onnx {100 * p.onnx_top1:.2f}%"
    )
    for b, t in sorted((report.threads or {}).items()):
        ms = ", ".join(f"{n} thread(s) {v:.3f} ms" for n, v in t["ms"].items())
        click.echo(f"  batch {b}: {ms}; {t['threads']} chosen (recorded in the model for target.threads = 0)")


@click.command()
@click.argument("subnet")
@click.option("--seconds", type=float, default=300.0, show_default=True, help="Wall-clock budget of the training.")
@click.option("--lr", type=float, default=0.04, show_default=True, help="Peak learning rate (cosine over the budget).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="[STATE/exports/SUBNET.ft.onnx]")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="[STATE/supernet/supernet.pt]")
@click.option("--data", "data_spec", default=None, help="Data with train and test splits [Fashion-MNIST].")
@click.option("--calib", type=int, default=2000, show_default=True, help="Training images for BN re-calibration.")
@click.option("--parity-images", type=int, default=10000, show_default=True, help="Test images for the gate.")
@click.option("--threads", type=int, default=None, help="torch threads [all cores].")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def finetune(
    subnet: str,
    seconds: float,
    lr: float,
    out: Path | None,
    checkpoint: Path | None,
    data_spec: str | None,
    calib: int,
    parity_images: int,
    threads: int | None,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Train one subnet alone from its supernet weights for a bounded time, then export it.

    The subnet keeps its learned quantizers and trains on the supernet's training split with
    its augmentation; top-1 on the validation split is shown before and after, and the model
    is written behind the same parity gate as `lifelong export`. SUBNET is a canonical name
    or largest[:wXaY] / smallest[:wXaY].

    \b
    Example:
        lifelong finetune c32.k3w8a8.p_c64.k3w8a8.p_hf.d128w8a8.ow8a8 --seconds 120
    """
    import torch

    from lifelong.data.datasets import load_dataset, load_fashion_mnist
    from lifelong.jobs.export import export_from_checkpoint
    from lifelong.train.finetune import FinetuneConfig

    if threads:
        torch.set_num_threads(threads)
    state = resolve_state_dir(state_dir)
    ckpt = checkpoint or default_checkpoint(state)
    config = FinetuneConfig(seconds=seconds, lr=lr)
    train_data = load_dataset(data_spec, split="train") if data_spec else load_fashion_mnist("train")
    test = load_dataset(data_spec, split="test") if data_spec else load_fashion_mnist("test")
    if out is None:
        from lifelong.nn.checkpoint import load_checkpoint

        out = state / "exports" / f"{load_checkpoint(ckpt).build().space.resolve(subnet)}.ft.onnx"
    report = export_from_checkpoint(
        ckpt, subnet, out, calibration=train_data.head(calib).as_float(), test=test, parity_images=parity_images,
        finetune=config, train=train_data, show_progress=not as_json, timing=_export_timing(state),
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    ft = report.finetune or {}
    click.echo(f"fine-tuned {report.subnet} for {ft.get('seconds', 0):.0f} s ({ft.get('steps', 0)} steps)")
    click.echo(
        f"  validation top-1 ({ft.get('val_images', 0)} images): {100 * ft.get('val_top1_before', 0):.2f}% -> "
        f"{100 * ft.get('val_top1_after', 0):.2f}%"
    )
    _echo_file(report)
