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
import time
from pathlib import Path
from typing import Any

import click

from lifelong.errors import LifelongError
from service.paths import default_checkpoint, default_profile, resolve_state_dir

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
    from lifelong.checkpoint import load_checkpoint
    from lifelong.data import load_dataset, load_fashion_mnist
    from lifelong.evaluate import evaluate_subnet

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

    \b
    Example:
        lifelong export largest:w8a8 --out /tmp/largest-w8a8.onnx
    """
    from lifelong.data import load_dataset, load_fashion_mnist
    from lifelong.export_job import export_from_checkpoint

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
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    p = report.parity
    form = "requantized: integer kernels" if report.requantized else "exact"
    if report.requant_parity is not None and not report.requantized:
        form += f" (requantized form failed the gate: agreement {100 * report.requant_parity.agreement:.2f}%)"
    click.echo(f"exported {report.subnet} [{form}]")
    click.echo(f"  -> {report.path} ({report.bytes} bytes)")
    click.echo(
        f"  parity on {p.images} images: agreement {100 * p.agreement:.2f}%, top-1 torch {100 * p.torch_top1:.2f}% "
        f"onnx {100 * p.onnx_top1:.2f}%"
    )


@cli.command()
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

    from lifelong.data import load_dataset, load_fashion_mnist
    from lifelong.export_job import export_from_checkpoint
    from lifelong.finetune import FinetuneConfig

    if threads:
        torch.set_num_threads(threads)
    state = resolve_state_dir(state_dir)
    ckpt = checkpoint or default_checkpoint(state)
    config = FinetuneConfig(seconds=seconds, lr=lr)
    train_data = load_dataset(data_spec, split="train") if data_spec else load_fashion_mnist("train")
    test = load_dataset(data_spec, split="test") if data_spec else load_fashion_mnist("test")
    if out is None:
        from lifelong.checkpoint import load_checkpoint

        out = state / "exports" / f"{load_checkpoint(ckpt).build().space.resolve(subnet)}.ft.onnx"
    report = export_from_checkpoint(
        ckpt, subnet, out, calibration=train_data.head(calib).as_float(), test=test, parity_images=parity_images,
        finetune=config, train=train_data, show_progress=not as_json,
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    ft, p = report.finetune or {}, report.parity
    click.echo(f"fine-tuned {report.subnet} for {ft.get('seconds', 0):.0f} s ({ft.get('steps', 0)} steps)")
    click.echo(
        f"  validation top-1 ({ft.get('val_images', 0)} images): {100 * ft.get('val_top1_before', 0):.2f}% -> "
        f"{100 * ft.get('val_top1_after', 0):.2f}%"
    )
    click.echo(f"  -> {report.path} ({report.bytes} bytes)")
    click.echo(
        f"  parity on {p.images} images: agreement {100 * p.agreement:.2f}%, top-1 torch {100 * p.torch_top1:.2f}% "
        f"onnx {100 * p.onnx_top1:.2f}%"
    )


@cli.command()
@click.option("--threads", type=int, default=2, show_default=True, help="onnxruntime intra-op threads.")
@click.option("--check", is_flag=True, help="Only say whether the stored profile fits this device.")
@click.option("--fit-subnets", type=int, default=60, show_default=True, help="Subnets the correction is fitted on.")
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

    from lifelong.latency import calibrate
    from lifelong.profile import DeviceProfile, device_fingerprint, profile_device
    from lifelong.space import SearchSpace

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


# -- the service ---------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="State directory [$STATE_DIRECTORY, else ~/.local/state/lifelong].",
)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    default=None,
    help="API Unix socket [$RUNTIME_DIRECTORY/lifelong.sock, else STATE/lifelong.sock].",
)
@click.option(
    "--admin-socket",
    "admin_socket_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Admin Unix socket (deploy, rollback, history), mode 0600 [beside --socket: NAME-admin.sock].",
)
@click.option(
    "--deploy-dir",
    "deploy_dirs",
    type=click.Path(path_type=Path, file_okay=False),
    multiple=True,
    help='A folder `/v1/deploy {"path": FILE}` may read models from, besides STATE/inbox (repeatable).',
)
@click.option("--tcp", "tcp_port", type=click.IntRange(0, 65535), default=None, help="Also listen on 127.0.0.1:PORT.")
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Policy file, watched for edits [$CONFIGURATION_DIRECTORY/policy.toml, else STATE/policy.toml]; "
    "while it does not exist the 'balanced' preset applies.",
)
@click.option(
    "--threads", type=click.IntRange(1), default=None, help="onnxruntime threads [the policy's target.threads]."
)
@click.option("--api-threads", type=click.IntRange(1), default=4, show_default=True, help="Requests answered at once.")
@click.option(
    "--probe-interval",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds between latency probes.",
)
@click.option(
    "--retention-interval",
    type=click.FloatRange(min=1),
    default=3600.0,
    show_default=True,
    help="Seconds between retention passes.",
)
@click.option(
    "--settle-ms",
    type=click.IntRange(0),
    default=500,
    show_default=True,
    help="Quiet time before a new inbox or policy file is read.",
)
@click.option("--poll", is_flag=True, help="Watch files by polling instead of inotify (network file systems).")
def serve(
    state_dir: Path | None,
    socket_path: Path | None,
    admin_socket_path: Path | None,
    deploy_dirs: tuple[Path, ...],
    tcp_port: int | None,
    policy_path: Path | None,
    threads: int | None,
    api_threads: int,
    probe_interval: float,
    retention_interval: float,
    settle_ms: int,
    poll: bool,
) -> None:
    """Run the daemon in the foreground: serve the deployed model, watch the inbox and the policy.

    This is the systemd unit's command line (Type=notify: READY, WATCHDOG, RELOADING on
    SIGHUP, STOPPING and a graceful drain on SIGTERM). It never imports torch.

    \b
    Example:
        lifelong serve --state-dir /tmp/ll --socket /tmp/ll/api.sock --policy /tmp/ll/policy.toml
    """
    from service.daemon import Daemon, DaemonSettings

    settings = DaemonSettings.from_environment(
        state_dir=state_dir,
        socket_path=socket_path,
        policy_path=policy_path,
        admin_socket_path=admin_socket_path,
        deploy_dirs=tuple(d.resolve() for d in deploy_dirs),
        tcp_port=tcp_port,
        threads=threads,
        api_threads=api_threads,
        probe_interval_s=probe_interval,
        retention_interval_s=retention_interval,
        settle_ms=settle_ms,
        force_polling=poll,
    )
    _setup_logging(settings.state_dir, "serve", verbose=True)
    raise SystemExit(Daemon(settings).run())


def _client_options(fn: Any) -> Any:
    fn = click.option(
        "--socket",
        "socket_path",
        type=click.Path(path_type=Path),
        default=None,
        help="The daemon's socket [$LIFELONG_SOCKET, /run/lifelong/lifelong.sock, else STATE/lifelong.sock].",
    )(fn)
    fn = click.option(
        "--tcp", "tcp_port", type=click.IntRange(1, 65535), default=None, help="Talk to 127.0.0.1:PORT instead."
    )(fn)
    return click.option("--state-dir", type=click.Path(path_type=Path), default=None, help="State directory.")(fn)


def _client(socket_path: Path | None, tcp_port: int | None, state_dir: Path | None, timeout: float = 30.0) -> Any:
    from service.client import Client
    from service.paths import admin_socket_for, default_socket

    if tcp_port is not None:  # the admin socket is where a TCP-only daemon puts it: STATE/lifelong-admin.sock
        admin = admin_socket_for(default_socket(resolve_state_dir(state_dir)))
        return Client(port=tcp_port, timeout=timeout, admin_socket_path=admin)
    return Client(socket_path or default_socket(resolve_state_dir(state_dir), client=True), timeout=timeout)


@cli.command()
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print the whole status document as JSON.")
def status(socket_path: Path | None, tcp_port: int | None, state_dir: Path | None, as_json: bool) -> None:
    """Show the deployed model (accuracy, latency, precision map), policy, drift, events, jobs and workers.

    \b
    Examples:
        lifelong status
        lifelong status --json | jq .store.model
    """
    from service.status import format_status

    with _client(socket_path, tcp_port, state_dir) as client:
        doc = client.status()
    click.echo(json.dumps(doc, indent=2) if as_json else format_status(doc))


@cli.command()
@_client_options
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Deployments shown.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def history(socket_path: Path | None, tcp_port: int | None, state_dir: Path | None, limit: int, as_json: bool) -> None:
    """List deployments, newest first: when, which model, why, and how each ended.

    \b
    Example:
        lifelong history --limit 5
    """
    from service.status import format_history

    with _client(socket_path, tcp_port, state_dir) as client:
        doc = client.history(limit)
    click.echo(json.dumps(doc, indent=2) if as_json else format_history(doc))


def _print_swap(result: dict[str, Any], verb: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif not result.get("changed"):
        click.echo(f"{result['model_id']} already serves; nothing changed")
    else:
        took = result.get("load_ms")
        click.echo(
            f"{verb} {result['model_id']} (was {result.get('previous_id') or 'nothing'})"
            + (f"; loaded, validated and warmed up in {took:.0f} ms" if took is not None else "")
        )
        canary = result.get("canary")
        if canary:
            click.echo(
                f"canary: watched over {canary.get('window')} requests against {canary.get('baseline')}, then promoted "
                "or rolled back by the policy's swap rules (`lifelong status` shows its progress)"
            )


@cli.command()
@click.argument("target")
@click.option("--reason", default=None, help="Recorded in the history.")
@click.option("--export", "export_subnet", is_flag=True,
              help="TARGET is a subnet: the daemon exports it from the supernet in use, then deploys it.")  # fmt: skip
@_client_options
@click.option("--timeout", type=click.FloatRange(min=1), default=150.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def deploy(
    target: str,
    reason: str | None,
    export_subnet: bool,
    socket_path: Path | None,
    tcp_port: int | None,
    state_dir: Path | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Deploy an ONNX file or a model id from the registry, through the daemon's validated hot swap.

    A file is uploaded to the daemon (its sandbox need not see your files). The model is
    loaded, validated and warmed up before it serves; a refused model leaves the current one
    serving and the command fails with the reason. With --export, TARGET is a subnet (as
    `lifelong front` lists them): the daemon exports it in a worker from the supernet it uses
    (an adapted one included), behind the parity gate, and deploys it; the command waits for that.

    \b
    Examples:
        lifelong deploy /tmp/largest-w8a8.onnx
        lifelong deploy 3f2a9c0d1e4b5a6c --reason "back to last week's model"
        lifelong deploy largest:w8a8 --export
    """
    path = Path(target)
    with _client(socket_path, tcp_port, state_dir, timeout) as client:
        if export_subnet:
            _export_and_wait(client, target, reason, timeout, as_json)
            return
        if path.is_file():
            result = client.deploy(data=path.read_bytes(), name=path.name, reason=reason)
        elif path.suffix == ".onnx" or os.sep in target:
            raise click.BadParameter(f"no file {target}; give an ONNX file or a model id", param_hint="TARGET")
        else:
            result = client.deploy(model=target, reason=reason)
    _print_swap(result, "deployed", as_json)


def _export_and_wait(client: Any, subnet: str, reason: str | None, timeout: float, as_json: bool) -> None:
    asked = time.time()
    queued = client.export_deploy(subnet, reason=reason)
    if not as_json:
        click.echo(f"{subnet}: {queued['export']}")
    deadline = time.monotonic() + timeout
    while True:
        status = client.status()
        last = (status.get("export") or {}).get("last") or {}
        if last.get("subnet") == subnet and float(last.get("finished") or 0) >= asked:
            break
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"the export of {subnet} did not end within {timeout:g} s; see `lifelong status`"
            )
        time.sleep(0.5)
    if as_json:
        click.echo(json.dumps({"queued": queued, "last": last, "model": status.get("model")}, indent=2))
    else:
        click.echo(f"{last['outcome']}: {last['reason']}")
        click.echo(f"serving: {status.get('model')}")
    if last["outcome"] != "deployed":
        raise SystemExit(1)


@cli.command()
@click.option("--reason", default=None, help="Recorded in the history.")
@_client_options
@click.option("--timeout", type=click.FloatRange(min=1), default=150.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def rollback(
    reason: str | None,
    socket_path: Path | None,
    tcp_port: int | None,
    state_dir: Path | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Go back to the model deployed before the current one (validated like any deploy).

    \b
    Example:
        lifelong rollback --reason "accuracy dropped on line 3"
    """
    with _client(socket_path, tcp_port, state_dir, timeout) as client:
        result = client.rollback(reason)
    _print_swap(result, "rolled back to", as_json)


def _read_inputs(path: Path) -> Any:
    import numpy as np

    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"{path} is not a readable .npy array: {exc}", param_hint="FILE") from None
    if suffix == ".npz":
        from lifelong.data import load_npz

        return load_npz(path).x
    if suffix in (".png", ".jpg", ".jpeg"):
        from lifelong.data import read_image

        return read_image(path)
    raise click.BadParameter(f"{path}: expected a .npy or .npz batch, or a .png/.jpg image", param_hint="FILE")


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_client_options
@click.option("--json", "as_json", is_flag=True, help="Print classes, probabilities and the model as JSON.")
def predict(file: Path, socket_path: Path | None, tcp_port: int | None, state_dir: Path | None, as_json: bool) -> None:
    """Classify images with the deployed model: a .npy/.npz batch (28x28) or a PNG/JPEG image.

    \b
    Examples:
        lifelong predict shoe.png
        lifelong predict batch.npz --json
    """
    images = _read_inputs(file)
    with _client(socket_path, tcp_port, state_dir) as client:
        answer = client.predict(images)
    if as_json:
        doc = {
            "model": answer.model,
            "request_id": answer.request_id,
            "classes": answer.classes.tolist(),
            "probabilities": answer.probabilities.tolist(),
            "latency_ms": answer.latency_ms,
        }
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"model {answer.model} (request {answer.request_id}, {answer.latency_ms:.2f} ms)")
    for i, (cls, probs) in enumerate(zip(answer.classes, answer.probabilities, strict=True)):
        click.echo(f"  {i}: class {int(cls)}  p={float(probs[int(cls)]):.3f}")


@cli.group()
def policy() -> None:
    """Check and show policy files and the shipped presets.

    \b
    Examples:
        lifelong policy check /etc/lifelong/policy.toml
        lifelong policy show --preset battery-saver
    """


def _policy_problems(file: Path) -> tuple[Any, list[str]]:
    from policies import PolicyError, PolicyValidationError, load_policy

    try:
        return load_policy(file), []
    except PolicyValidationError as exc:
        return None, [str(p) for p in exc.problems]
    except PolicyError as exc:
        return None, [str(exc)]


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def policy_check(file: Path, as_json: bool) -> None:
    """Validate a policy file: every problem at once, with what was expected; exit code 1 if invalid.

    \b
    Example:
        lifelong policy check /etc/lifelong/policy.toml
    """
    from policies import policy_to_dict

    pol, problems = _policy_problems(file)
    if as_json:
        doc = {"file": str(file), "valid": not problems, "problems": problems}
        doc["policy"] = policy_to_dict(pol) if pol is not None else None
        click.echo(json.dumps(doc, indent=2))
    elif problems:
        click.echo(f"{file}: invalid policy ({len(problems)} problem{'s' if len(problems) != 1 else ''}):")
        for line in problems:
            click.echo(f"  {line}")
    else:
        b = pol.budgets
        click.echo(
            f"{file}: valid policy {pol.name!r} (objective {pol.objective.kind}, latency budget "
            f"{'none' if b.latency_ms_p95 is None else f'{b.latency_ms_p95:g} ms p95'})"
        )
    if problems:
        raise SystemExit(1)


@policy.command("show")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--preset", default=None, help="Show a shipped preset instead (balanced, low-latency, ...).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help="State directory.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def policy_show(file: Path | None, preset: str | None, state_dir: Path | None, as_json: bool) -> None:
    """Print a policy in full, defaults filled in: a file, a preset, or the one the service reads.

    Without FILE or --preset: the service's policy file if it exists, else the 'balanced' preset.

    \b
    Examples:
        lifelong policy show
        lifelong policy show --preset low-latency --json
    """
    from policies import PolicyError, load_preset, policy_to_dict, policy_to_toml
    from service.paths import default_policy

    if file is not None and preset is not None:
        raise click.UsageError("give a FILE or --preset, not both")
    if preset is not None:
        try:
            pol, source = load_preset(preset), f"preset:{preset}"
        except PolicyError as exc:
            raise click.BadParameter(str(exc), param_hint="--preset") from None
    else:
        path = file or default_policy(resolve_state_dir(state_dir), client=True)
        if file is None and not path.exists():
            pol, source = load_preset("balanced"), f"preset:balanced (no policy file at {path})"
        else:
            pol, problems = _policy_problems(path)
            if problems:
                click.echo(f"{path}: invalid policy:", err=True)
                for line in problems:
                    click.echo(f"  {line}", err=True)
                raise SystemExit(1)
            source = str(path)
    if as_json:
        click.echo(json.dumps({"source": source, "policy": policy_to_dict(pol)}, indent=2))
        return
    click.echo(f"# {source}\n{policy_to_toml(pol)}", nl=False)


from service.cli_demo import demo  # noqa: E402  (the demo has its own module)
from service.cli_predictor import predictor  # noqa: E402  (the predictor commands have their own module)
from service.cli_search import front, search  # noqa: E402  (the search commands have their own module)

cli.add_command(search)
cli.add_command(front)
cli.add_command(predictor)
cli.add_command(demo)


def main() -> None:
    cli(prog_name="lifelong")


if __name__ == "__main__":
    main()
