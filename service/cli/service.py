"""The commands that run the daemon or talk to it: serve, status, history, deploy, rollback, predict.

Each client command finds the daemon's socket (``--socket``, ``$LIFELONG_SOCKET``, the system
socket, else the state's) and prints a line a person reads, or JSON with ``--json``; admin
commands (deploy, rollback) go to the admin socket. No torch here.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from service.cli.common import client_options, make_client, setup_logging

__all__ = ["deploy", "history", "predict", "rollback", "serve", "status"]


@click.command()
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
    from service.daemon.core import Daemon, DaemonSettings

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
    setup_logging(settings.state_dir, "serve", verbose=True)
    raise SystemExit(Daemon(settings).run())


@click.command()
@client_options
@click.option("--json", "as_json", is_flag=True, help="Print the whole status document as JSON.")
def status(socket_path: Path | None, tcp_port: int | None, state_dir: Path | None, as_json: bool) -> None:
    """Show the deployed model (accuracy, latency, precision map), policy, drift, events, jobs and workers.

    \b
    Examples:
        lifelong status
        lifelong status --json | jq .store.model
    """
    from service.daemon.documents import format_status

    with make_client(socket_path, tcp_port, state_dir) as client:
        doc = client.status()
    click.echo(json.dumps(doc, indent=2) if as_json else format_status(doc))


@click.command()
@client_options
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Deployments shown.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def history(socket_path: Path | None, tcp_port: int | None, state_dir: Path | None, limit: int, as_json: bool) -> None:
    """List deployments, newest first: when, which model, why, and how each ended.

    \b
    Example:
        lifelong history --limit 5
    """
    from service.daemon.documents import format_history

    with make_client(socket_path, tcp_port, state_dir) as client:
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


@click.command()
@click.argument("target")
@click.option("--reason", default=None, help="Recorded in the history.")
@click.option("--export", "export_subnet", is_flag=True,
              help="TARGET is a subnet: the daemon exports it from the supernet in use, then deploys it.")  # fmt: skip
@client_options
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
    with make_client(socket_path, tcp_port, state_dir, timeout) as client:
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


@click.command()
@click.option("--reason", default=None, help="Recorded in the history.")
@client_options
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
    with make_client(socket_path, tcp_port, state_dir, timeout) as client:
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
        from lifelong.data.datasets import load_npz

        return load_npz(path).x
    if suffix in (".png", ".jpg", ".jpeg"):
        from lifelong.data.datasets import read_image

        return read_image(path)
    raise click.BadParameter(f"{path}: expected a .npy or .npz batch, or a .png/.jpg image", param_hint="FILE")


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@client_options
@click.option("--json", "as_json", is_flag=True, help="Print classes, probabilities and the model as JSON.")
def predict(file: Path, socket_path: Path | None, tcp_port: int | None, state_dir: Path | None, as_json: bool) -> None:
    """Classify images with the deployed model: a .npy/.npz batch (28x28) or a PNG/JPEG image.

    \b
    Examples:
        lifelong predict shoe.png
        lifelong predict batch.npz --json
    """
    images = _read_inputs(file)
    with make_client(socket_path, tcp_port, state_dir) as client:
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
