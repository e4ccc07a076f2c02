"""``lifelong demo``: the product end to end on this machine, shown live (:mod:`service.demo.run`).

Registered on the ``lifelong`` group by :mod:`service.cli.main`, whose group turns library errors
(a :class:`~service.errors.DemoError` among them) into one-line messages with exit code 2.
Ctrl-C stops the demo's daemon (once started), writes the report of what was seen, and exits
with 130.
Nothing here imports torch: the torch steps run as ``lifelong`` subprocesses.
"""

from __future__ import annotations

from pathlib import Path

import click

from service.demo.stream import SHIFTS
from service.state.paths import resolve_state_dir

__all__ = ["demo"]


@click.command()
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="State directory: cached supernet, profile, predictor and front; the report in STATE/demo.")  # fmt: skip
@click.option("--samples", type=click.IntRange(1000), default=3000, show_default=True,
              help="Clean samples streamed before the shift (the drift reference takes the first 1,000).")  # fmt: skip
@click.option("--shift", type=click.Choice(SHIFTS), default="noise", show_default=True, help="The shift injected.")
@click.option("--timeout", type=click.FloatRange(min=5), default=300.0, show_default=True,
              help="Seconds to wait for the drift detection, and again for the adaptation.")  # fmt: skip
@click.option("--no-train", is_flag=True, help="Fail instead of training a quick supernet when none is cached.")
@click.option("--rate", type=click.FloatRange(1, 5000), default=150.0, show_default=True,
              help="Samples a second sent to the daemon.")  # fmt: skip
@click.option("--finetune-seconds", type=click.FloatRange(0, 3600), default=60.0, show_default=True,
              help="Fine-tune each chosen point alone this long before its export (0: the supernet's weights as they are).")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Image order, noise and labelled share.")
def demo(
    state_dir: Path | None,
    samples: int,
    shift: str,
    timeout: float,
    no_train: bool,
    rate: float,
    finetune_seconds: float,
    seed: int,
) -> None:
    """Run the whole lifelong loop here, live: train, profile, search, serve, drift, adapt, swap.

    Uses what STATE holds (supernet, device profile, accuracy predictor, front) and makes
    what is missing with quick settings (about 12 minutes on 2 cores from nothing, 3 to 4
    with everything cached). Then it starts the daemon in STATE/demo/service, deploys the
    policy's choice among fine-tuned candidates, streams Fashion-MNIST test images with some true labels fed back,
    injects a shift, waits for the drift detection and the adaptation, lowers the latency
    budget in the policy file, and stops the daemon. The report (timeline, accuracy before
    and after, the front as a PNG) is written to STATE/demo/report.md and report.json.

    \b
    Examples:
        lifelong demo
        lifelong demo --state-dir /tmp/demo --shift contrast --timeout 120
        lifelong demo --no-train --samples 2000
    """
    from service.demo.run import DemoSettings, run_demo

    settings = DemoSettings(
        state_dir=resolve_state_dir(state_dir),
        samples=samples,
        shift=shift,
        timeout=timeout,
        train=not no_train,
        rate=rate,
        finetune_seconds=finetune_seconds,
        seed=seed,
    )
    try:
        run_demo(settings, click.echo)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: run the same command to go on (what is cached is reused)", err=True)
        raise SystemExit(130) from None
