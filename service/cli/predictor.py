"""``lifelong predictor collect | build | show``: the accuracy predictor's data, the predictor, its report.

Registered on the ``lifelong`` group by :mod:`service.cli.main`, whose group turns library errors
into one-line messages (exit code 2). ``collect`` evaluates subnets with torch, imported inside
the command only: this module is imported by the serving process's entry point. ``build`` and
``show`` are numpy only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from service.state.paths import default_checkpoint, default_predictor, default_predictor_data, resolve_state_dir

__all__ = ["format_report", "predictor"]

_STATE_DIR = click.option("--state-dir", type=click.Path(path_type=Path), default=None, help="State directory.")


@click.group()
def predictor() -> None:
    """Collect evaluated subnets, build the accuracy predictor the search reads, show its report.

    \b
    Examples:
        lifelong predictor collect --fp 300 --quant 400 --corner 60
        lifelong predictor build
        lifelong predictor show
    """


@predictor.command("collect")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Supernet checkpoint [STATE/supernet/supernet.pt].")  # fmt: skip
@click.option("--train-data", "data_spec", default=None,
              help="Data the supernet was trained on (IDX folder, class folders, .npz) [Fashion-MNIST].")  # fmt: skip
@click.option("--fp", "n_fp", type=click.IntRange(0), default=300, show_default=True,
              help="Full-precision subnets to evaluate.")  # fmt: skip
@click.option("--quant", "n_quant", type=click.IntRange(0), default=400, show_default=True,
              help="Subnets with the space's per-layer precision mix to evaluate.")  # fmt: skip
@click.option("--corner", "n_corner", type=click.IntRange(0), default=0, show_default=True,
              help="Corner subnets to evaluate: the largest and smallest subnet of every block kind at every "
                   "precision first, then mutations of the largest one with random precision mixes (the "
                   "accurate end of the space, which uniform draws never reach).")  # fmt: skip
@click.option("--calib", type=click.IntRange(1), default=1000, show_default=True,
              help="Training images for each subnet's BN re-calibration.")  # fmt: skip
@click.option("--val", type=click.IntRange(1), default=None,
              help="Validation images top-1 is measured on [all of the split training held out].")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Picks the subnets and calibration images.")
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True, help="torch threads.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Data file, created or extended [STATE/predictor/samples.json].")  # fmt: skip
@_STATE_DIR
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the data's summary as JSON.")
def collect(
    checkpoint: Path | None,
    data_spec: str | None,
    n_fp: int,
    n_quant: int,
    n_corner: int,
    calib: int,
    val: int | None,
    seed: int,
    threads: int,
    out: Path | None,
    state_dir: Path | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Evaluate subnets of the supernet for the accuracy predictor, resuming an earlier run.

    Each subnet's BN is re-calibrated on --calib training images and its top-1 measured on the
    validation split the supernet's training held out. The file is saved after every
    evaluation; running the command again with the same settings skips what it holds, and a
    larger --fp, --quant or --corner extends it. Corner samples train the predictor with the
    quantized ones and are reported on apart by `lifelong predictor build`.

    \b
    Examples:
        lifelong predictor collect --fp 300 --quant 400 --threads 2
        lifelong predictor collect --fp 300 --quant 400 --corner 60
        lifelong predictor collect --fp 20 --quant 20 --out /tmp/samples.json
    """
    from lifelong.data.datasets import load_dataset
    from lifelong.predictor.samples import CollectSettings, PredictorData, collect_predictor_data
    from service.cli.common import setup_logging

    state = resolve_state_dir(state_dir)
    setup_logging(state, "predictor", verbose=False)
    settings = CollectSettings(
        fp=n_fp, quant=n_quant, corner=n_corner, calib=calib, val=val, seed=seed, threads=threads
    )
    target = out or default_predictor_data(state)
    ckpt = checkpoint or default_checkpoint(state)
    train_data = load_dataset(data_spec, split="train") if data_spec else None
    click.echo(f"collecting -> {target}", err=True)
    try:
        data = collect_predictor_data(ckpt, target, settings, train_data=train_data, progress=not quiet)
    except KeyboardInterrupt:
        held = len(PredictorData.load(target).samples) if target.exists() else 0
        click.echo(f"\ninterrupted: {target} holds {held} samples; run the same command to resume", err=True)
        raise SystemExit(130) from None
    summary = {"path": str(target), "cost": data.cost(), "provenance": data.to_dict()["provenance"]}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    cost = data.cost()
    corner = cost["corner"]["evaluations"]
    click.echo(
        f"{target}: {cost['fp']['evaluations']} fp + {cost['quant']['evaluations']} quantized subnets"
        + (f" + {corner} corner subnets" if corner else "")
        + f", {cost['seconds']:.0f} s of evaluation ({_per_eval(cost)})"
    )


@predictor.command("build")
@click.option("--data", "data_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Collected samples [STATE/predictor/samples.json].")  # fmt: skip
@click.option("--holdout", type=click.IntRange(2), default=200, show_default=True,
              help="Last quantized samples held out for the report.")  # fmt: skip
@click.option("--corner-holdout", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="Share of the corner samples (the last ones) held out and reported on apart; none below 5.")  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Predictor file, read by `lifelong search` [STATE/predictor/predictor.npz].")  # fmt: skip
@_STATE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def build(
    data_path: Path | None,
    holdout: int,
    corner_holdout: float,
    out: Path | None,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Train the predictor on the full-precision samples, transfer it to the quantized ones (APQ), save it.

    Corner samples, where collected, are trained on with the quantized ones. The report
    (Kendall tau and RMSE on the held-out uniform quantized subnets and on the held-out
    corner ones, transfer against training on quantized samples alone, the data's cost) is
    saved in the predictor.

    \b
    Examples:
        lifelong predictor build
        lifelong predictor build --data /tmp/samples.json --holdout 100 --out /tmp/predictor.npz
    """
    from lifelong.predictor.build import BuildSettings, build_predictor
    from lifelong.predictor.samples import PredictorData
    from service.cli.common import setup_logging

    state = resolve_state_dir(state_dir)
    setup_logging(state, "predictor", verbose=False)
    data = PredictorData.load(data_path or default_predictor_data(state))
    model, report = build_predictor(data, BuildSettings(holdout=holdout, corner_holdout=corner_holdout))
    target = model.save(out or default_predictor(state))
    doc = report.to_dict()
    if as_json:
        click.echo(json.dumps({"path": str(target), "report": doc}, indent=2))
        return
    click.echo(f"saved {target}")
    click.echo(format_report(doc))


@predictor.command("show")
@click.option("--predictor", "path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Predictor file [STATE/predictor/predictor.npz].")  # fmt: skip
@_STATE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the predictor's metadata as JSON.")
def show(path: Path | None, state_dir: Path | None, as_json: bool) -> None:
    """Show how the predictor was built and how good it is on held-out quantized and corner subnets.

    \b
    Examples:
        lifelong predictor show
        lifelong predictor show --json | jq .report.transfer
    """
    from lifelong.predictor.mlp import AccuracyPredictor

    path = path or default_predictor(resolve_state_dir(state_dir))
    meta = AccuracyPredictor.load(path).meta
    if as_json:
        click.echo(json.dumps({"path": str(path), **meta}, indent=2))
        return
    click.echo(f"{path}: trained on {meta.get('trained_on', '?')}, features {meta.get('features', '?')}")
    report = meta.get("report")
    click.echo(format_report(report) if isinstance(report, dict) else "no build report in this predictor")


def _per_eval(cost: dict[str, Any]) -> str:
    parts = []
    for kind in ("fp", "quant", "corner"):
        s = cost.get(kind, {}).get("seconds_per_evaluation")
        if s is not None:
            parts.append(f"{kind} {s:.1f} s/eval")
    return ", ".join(parts) or "none"


def format_report(r: dict[str, Any]) -> str:
    """The build report as a few lines of text (``BuildReport.to_dict()``)."""
    t, s, f = r["transfer"], r["scratch"], r["fp_only"]
    cost, prov = r["data_cost"], r["provenance"]
    verdict = "meets" if r["meets_target"] else "misses"
    noise = r.get("label_noise_pt")
    ceiling = r.get("tau_ceiling")
    lines = [
        f"held-out quantized subnets: {r['holdout']} (top-1 spread {r['holdout_top1_std_pt']:.2f} pt std)",
        "  label noise from the finite validation set: "
        + ("unknown" if noise is None else f"{noise:.2f} pt std; a perfect predictor would reach tau ~{ceiling:.2f}"),
        f"  FP-trained + transferred (saved): Kendall tau {t['kendall_tau']:.3f}, RMSE {t['rmse_pt']:.2f} pt "
        f"-- {verdict} the tau >= {r['target_tau']:.2f} target",
        f"  quantized samples alone:          Kendall tau {s['kendall_tau']:.3f}, RMSE {s['rmse_pt']:.2f} pt",
        f"  FP-trained, not transferred:      Kendall tau {f['kendall_tau']:.3f}, RMSE {f['rmse_pt']:.2f} pt",
    ]
    corner = r.get("corner")
    if corner:
        ct, cs, cf = corner["transfer"], corner["scratch"], corner["fp_only"]
        lines += [
            f"held-out corner subnets: {r['corner_holdout']} (top-1 {corner['top1_mean_pt']:.2f} pt mean, "
            f"{corner['top1_std_pt']:.2f} pt std)",
            f"  FP-trained + transferred (saved): Kendall tau {ct['kendall_tau']:.3f}, RMSE {ct['rmse_pt']:.2f} pt, "
            f"bias {corner['bias_pt']:+.2f} pt (predicted - measured)",
            f"  quantized samples alone:          Kendall tau {cs['kendall_tau']:.3f}, RMSE {cs['rmse_pt']:.2f} pt",
            f"  FP-trained, not transferred:      Kendall tau {cf['kendall_tau']:.3f}, RMSE {cf['rmse_pt']:.2f} pt",
        ]
    n_corner = r.get("corner_train", 0)
    if n_corner and not corner:
        lines.append("held-out corner subnets: none (too few corner samples to hold some out)")
    with_corners = f" + {n_corner} corner" if n_corner else ""
    lines += [
        f"trained on {r['fp_samples']} FP + {r['quant_train']} quantized{with_corners} samples ({r['features']}), "
        f"built in {r['seconds']:.1f} s",
        "transfer vs quantized alone, by quantized samples (tau / RMSE pt)"
        + (f", each with the {n_corner} corner samples:" if n_corner else ":"),
    ]
    for c in r["comparison"]:
        ct, cs = c["transfer"], c["scratch"]
        lines.append(
            f"  {c['quant_samples']:>5}: {ct['kendall_tau']:.3f} / {ct['rmse_pt']:.2f}  vs  "
            f"{cs['kendall_tau']:.3f} / {cs['rmse_pt']:.2f}"
        )
    lines.append(
        f"data: {cost['evaluations']} evaluations, {cost['seconds']:.0f} s ({_per_eval(cost)}); BN calibrated on "
        f"{prov['calib_images']} images, top-1 on {prov['val_images']} validation images; "
        f"checkpoint {prov['checkpoint_sha256'][:12]}"
    )
    return "\n".join(lines)
