"""``lifelong search`` and ``lifelong front``: search the front for a policy, and show it.

Registered on the ``lifelong`` group by :mod:`service.cli.main`, whose group turns library errors
into one-line messages (exit code 2). Policy errors are not library errors (``policies``
imports nothing of ours), so they are turned into the same one-line form here, with the
policy loader's own text: every problem, with file, key, expectation and "did you mean".

Neither command imports torch: the predictor runs in numpy and latency comes from the
device profile's table.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from lifelong.errors import CheckpointError, DataError, FormatVersionError
from service.state.paths import (
    default_front,
    default_policy,
    default_predictor,
    default_predictor_data,
    default_profile,
    resolve_state_dir,
)

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from lifelong.predictor.mlp import AccuracyPredictor
    from lifelong.search.front import Front, FrontPoint
    from policies import Policy

__all__ = ["front", "format_front", "load_baselines", "resolve_policy", "search"]

DEFAULT_PRESET = "balanced"


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(2)


# -- inputs ------------------------------------------------------------------------------------
def resolve_policy(spec: str | None, state_dir: Path | None = None) -> tuple[Policy, str]:
    """The policy a command runs under, and where it came from.

    ``spec`` is a policy file or a preset name; without one, the service's policy file
    (as ``lifelong policy show`` finds it) if it exists, else the ``balanced`` preset.

    Raises:
        PolicyError: The file is invalid (every problem listed) or no preset has that name.
    """
    from policies import PolicyError, load_policy, load_preset, preset_names

    if spec is None:
        path = default_policy(resolve_state_dir(state_dir), client=True)
        if path.exists():
            return load_policy(path), str(path)
        return load_preset(DEFAULT_PRESET), f"preset:{DEFAULT_PRESET} (no policy file at {path})"
    path = Path(spec)
    if path.exists() or path.suffix == ".toml" or "/" in spec:
        return load_policy(path), str(path)
    try:
        return load_preset(spec), f"preset:{spec}"
    except PolicyError as exc:
        raise PolicyError(f"{exc} (or give a policy file: {', '.join(preset_names())} are the presets)") from None


def _policy(spec: str | None, state_dir: Path | None) -> tuple[Policy, str]:
    from policies import PolicyError

    try:
        return resolve_policy(spec, state_dir)
    except PolicyError as exc:
        _fail(str(exc))


def _load_predictor(path: Path) -> AccuracyPredictor:
    from lifelong.predictor.mlp import AccuracyPredictor

    if not path.exists():
        raise CheckpointError(f"no accuracy predictor at {path}: build one with `lifelong predictor build`")
    try:
        return AccuracyPredictor.load(path)
    except FormatVersionError:
        raise
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; build it again with `lifelong predictor build`") from exc


def load_baselines(path: Path) -> dict[str, tuple[float, float]]:
    """Baselines to draw: a JSON list of ``{"name", "accuracy", "latency_ms"}`` (accuracy in [0, 1],
    latency of one batch at the plotted batch size), or ``{"baselines": [...]}``.

    Returns ``name -> (latency_ms, accuracy)``, as :func:`lifelong.search.front.plot_front` takes them.
    """
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"no baselines file at {path}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable JSON baselines file ({exc})") from None
    if isinstance(doc, dict) and "baselines" in doc:
        doc = doc["baselines"]
    expected = 'a list of {"name": str, "accuracy": number in [0, 1], "latency_ms": number > 0}'
    if not isinstance(doc, list):
        raise DataError(f"{path}: expected {expected}, found {type(doc).__name__}")
    out: dict[str, tuple[float, float]] = {}
    for i, item in enumerate(doc):
        if not isinstance(item, dict) or set(item) != {"name", "accuracy", "latency_ms"}:
            raise DataError(f"{path}: baseline {i}: expected {expected}, found {item!r}")
        name, acc, ms = item["name"], item["accuracy"], item["latency_ms"]
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (acc, ms))
        if not isinstance(name, str) or not numbers or not 0 <= acc <= 1 or not 0 < ms < math.inf:
            raise DataError(f"{path}: baseline {i}: expected {expected}, found {item!r}")
        out[name] = (float(ms), float(acc))
    return out


# -- formatting --------------------------------------------------------------------------------
def _kb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e3:,.0f} kB"


def _budgets(policy: Policy) -> str:
    b = policy.budgets
    parts = [f"batch {policy.target.batch}"]
    if b.latency_ms_p95 is not None:
        parts.append(f"latency <= {b.latency_ms_p95:g} ms")
    if b.model_bytes is not None:
        parts.append(f"model <= {_kb(b.model_bytes)}")
    if b.peak_memory_bytes is not None:
        parts.append(f"peak memory <= {_kb(b.peak_memory_bytes)}")
    return f"{policy.objective.kind}; " + ", ".join(parts)


def _on_validation(front_info: Mapping[str, Any]) -> set[str]:
    """Front points whose accuracy is a validation measurement (predictor data), not a prediction."""
    return set(front_info.get("validation_measured") or ())


def _point_line(p: FrontPoint, batch: int, on_validation: frozenset[str] | set[str] = frozenset()) -> str:
    if p.measured_accuracy is not None:
        how = "measured"
    elif p.subnet in on_validation:
        how = "measured, not predicted"
    else:
        how = "predicted"
    acc = f"{100 * p.best_accuracy():.2f}% ({how})"
    return f"{p.subnet}: accuracy {acc}, {p.latency_at(batch):.3f} ms at batch {batch}, {_kb(p.best_bytes())}"


def format_front(
    front: Front,
    policy: Policy,
    chosen: FrontPoint | None,
    source: str = "",
    exported: Mapping[str, Sequence[str]] | None = None,
    serving: str | None = None,
) -> str:
    """The front as a table ordered by latency at the policy's batch; the chosen point is starred.

    Latencies are measured where a point has a measurement at that batch (marked ``m`` for
    the exported model, ``g`` for its graph timed by measured picks), else predicted by the
    device profile. ``exported``: subnet -> registered model ids (the
    point is marked ``e``, or ``s`` when ``serving`` is one of them): deployable at once.
    """
    batch = policy.target.batch
    info = front.info
    lines = []
    if source:
        lines.append(
            f"{source}: {len(front)} points from {info.get('algorithm', '?')} (seed {info.get('seed', '?')}, "
            f"{info.get('evaluations', '?')} evaluations, policy {info.get('policy', '?')!r})"
        )
    batches = [1] if batch == 1 else [1, batch]

    def ms(p: FrontPoint, b: int) -> str:
        measured = p.measured_latency_ms is not None and b in dict(p.measured_latency_ms)
        mark = (" ", "g" if p.latency_source == "graph" else "m")[measured]
        return f"{p.latency_at(b):.3f}{mark}"

    validated = _on_validation(info)
    head = f"  {'pred acc':>9} {'meas acc':>8} " + " ".join(f"{f'ms@{b}':>9}" for b in batches)
    lines.append(f"{head} {'bytes':>10}  subnet")
    for p in front.sorted(batch).points:
        mark = "*" if chosen is not None and p.subnet == chosen.subnet else " "
        meas = "-" if p.measured_accuracy is None else f"{100 * p.measured_accuracy:.2f}%"
        lat = " ".join(f"{ms(p, b):>9}" for b in batches)
        v = "v" if p.subnet in validated else " "
        ids = (exported or {}).get(p.subnet) or ()
        e = "s" if serving is not None and serving in ids else ("e" if ids else " ")
        row = f"{mark}{e}{100 * p.accuracy:7.2f}%{v} {meas:>8} {lat} {_kb(p.best_bytes()):>10}  {p.subnet}"
        lines.append(row)
    legend = "m = measured latency of the exported model, g = of its graph timed here, else predicted" + (
        "; v = measured top-1 (validation or local samples), not predicted" if validated else ""
    )
    if exported is not None:
        legend += "; e = exported (in the registry), s = serving"
    if chosen is not None:
        lines.append(f"(* = chosen by policy {policy.name!r}: {_budgets(policy)}; {legend})")
    else:
        lines.append(f"no point meets the budgets of policy {policy.name!r} ({_budgets(policy)})")
    return "\n".join(lines)


# -- commands ----------------------------------------------------------------------------------
_POLICY_HELP = "Policy file or preset name [the service's policy file if it exists, else the 'balanced' preset]."


@click.command()
@click.option("--policy", "policy_spec", default=None, help=_POLICY_HELP)
@click.option("--predictor", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Accuracy predictor [STATE/predictor/predictor.npz].")  # fmt: skip
@click.option("--profile", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Device profile [STATE/profile/device.json].")  # fmt: skip
@click.option("--budget", type=click.IntRange(4), default=20_000, show_default=True,
              help="Candidate evaluations (predictor + latency model).")  # fmt: skip
@click.option("--population", type=click.IntRange(4), default=100, show_default=True, help="NSGA-II population.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed and inputs, same front.")
@click.option("--warm-start/--no-warm-start", default=True, show_default=True,
              help="Seed the first population with the front at --out, if it comes from the same search space.")  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where the front is written (and warm-started from) [STATE/front/front.json].")  # fmt: skip
@click.option("--measure", type=click.IntRange(0), default=64, show_default=True,
              help="Measured picks: time this many of the best candidates on this device (their graphs, random "
                   "weights; about 0.2 s each) and rebuild the front on the measured latency. 0: predictions only.")  # fmt: skip
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help="State directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the search's record and the chosen point as JSON.")
def search(
    policy_spec: str | None,
    predictor: Path | None,
    profile: Path | None,
    budget: int,
    population: int,
    seed: int,
    warm_start: bool,
    measure: int,
    out: Path | None,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Search the Pareto front of predicted accuracy, latency and size for a policy.

    NSGA-II over the search space with the policy's budgets as hard constraints; latency is
    predicted at the policy's batch size from the device profile (`lifelong profile`),
    accuracy by the accuracy predictor (`lifelong predictor build`). Then the --measure best
    candidates are timed here and the front is rebuilt on their measured latency (the
    profile's model can be tens of percent off once onnxruntime fuses a whole graph). The
    front is saved with the search's record, and the point the policy chooses is printed.

    \b
    Examples:
        lifelong search
        lifelong search --policy low-latency --budget 50000 --seed 1
        lifelong search --policy /etc/lifelong/policy.toml --no-warm-start --json
    """
    from lifelong.device.profile import DeviceProfile, ProfileError
    from lifelong.progress import Progress
    from lifelong.search.front import Front, choose
    from lifelong.search.front_search import SearchSettings, input_record, search_front
    from lifelong.search.measure import MeasureSettings
    from lifelong.search.nsga2 import SearchProgress

    state = resolve_state_dir(state_dir)
    pol, source = _policy(policy_spec, state_dir)
    predictor_path = predictor or default_predictor(state)
    profile_path = profile or default_profile(state)
    out_path = out or default_front(state)
    try:
        settings = SearchSettings(
            evaluations=budget, population=population, seed=seed, warm_start=warm_start,
            measure=MeasureSettings(candidates=measure),
        )  # fmt: skip
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--budget") from None
    model = _load_predictor(predictor_path)
    prof = DeviceProfile.load(profile_path)
    if pol.target.batch not in prof.batches:
        raise ProfileError(
            f"policy {pol.name!r} optimises latency at batch {pol.target.batch} (target.batch), but the device "
            f"profile {profile_path} measured batches {list(prof.batches)}: set target.batch to one of them"
        )

    cached, cache_note = None, None
    if out_path.exists():
        try:
            cached = Front.load(out_path)
        except (DataError, FormatVersionError) as exc:  # a broken or old cache is replaced, not fatal
            cache_note = f"the cached front was not read ({exc}); searching from scratch"
            click.echo(f"warning: {cache_note}", err=True)

    bar = Progress(budget, phase="search")

    def progress(p: SearchProgress) -> None:
        figures: dict[str, float | str] = {"feasible": str(p.feasible)}
        if p.best_accuracy is not None:
            figures["best"] = f"{100 * p.best_accuracy:.2f}%"
        bar.update(p.evaluations - bar.done, **figures)

    record = {
        **input_record(predictor_path, profile_path),
        "policy_source": source,
        "cached_front": str(out_path) if cached is not None else None,
    }
    measured = _measured(state, model)
    timing: list[Progress] = []

    def timed(done: int, total: int) -> None:
        if not timing:
            bar.close()
            timing.append(Progress(total, phase="timing candidates"))
        timing[0].update(done - timing[0].done)

    found = search_front(
        model, prof, pol, settings=settings, cached=cached, progress=progress, record=record, measured=measured,
        measure_progress=timed,
    )  # fmt: skip
    bar.close()
    for t in timing:
        t.close()
    found.front.save(out_path)
    chosen = choose(found.front, pol)
    info = found.front.info
    if as_json:
        doc = {
            "front": str(out_path),
            "points": len(found.front),
            "record": info,
            "warm_start_note": found.warm_start_note or cache_note,
            "chosen": chosen.to_dict() if chosen is not None else None,
        }
        click.echo(json.dumps(doc, indent=2))
        return
    rate, inner = info["evaluations_per_s"], info["evaluator_evaluations_per_s"]
    click.echo(
        f"searched {info['evaluations']} subnets in {info['seconds']:.1f} s"
        + (f" ({rate:,.0f}/s; predictor + latency model alone {inner:,.0f}/s)" if rate and inner else "")
        + f", nsga2 seed {seed}, {info['generations']} generations, {info['feasible']} within budget"
    )
    if found.warm_started:
        click.echo(f"warm start: {found.warm_started} subnets of the cached front")
    elif found.warm_start_note:
        click.echo(f"no warm start: {found.warm_start_note}")
    if found.measurements_kept:
        click.echo(f"kept the measured figures of {found.measurements_kept} points still on the front")
    pick = info.get("measured_pick")
    if pick:
        err = pick.get(f"prediction_error_b{pol.target.batch}") or {}
        click.echo(
            f"measured picks: timed {pick['timed']} candidates in {pick['seconds']:.1f} s; the latency model was "
            f"off by a median {100 * err.get('median_abs', 0.0):.0f}% on them ({100 * err.get('within_10pct', 0.0):.0f}% "
            f"within 10%); {pick['measured_front']} of them form the front on measured latency"
        )
    ref = info["hypervolume_reference"]
    click.echo(
        f"front: {len(found.front)} points -> {out_path} (hypervolume {info['hypervolume']:.4g} above "
        f"{100 * ref['accuracy']:.2f}% and below {ref['latency_ms']:.3g} ms)"
    )
    if chosen is None:
        click.echo(f"policy {pol.name!r} ({_budgets(pol)}): no point meets its budgets")
    else:
        click.echo(f"policy {pol.name!r} ({_budgets(pol)}) chooses:")
        click.echo(f"  {_point_line(chosen, pol.target.batch, _on_validation(info))}")


@click.command("front")
@click.option("--policy", "policy_spec", default=None, help=_POLICY_HELP + " Marks the point it chooses.")
@click.option("--front", "front_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The front file [STATE/front/front.json].")  # fmt: skip
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a plot of accuracy against latency at the policy's batch size.")  # fmt: skip
@click.option("--baselines", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help='JSON list of {"name", "accuracy", "latency_ms"} drawn on the plot.')  # fmt: skip
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help="State directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the front, its record and the chosen point as JSON.")
def front(
    policy_spec: str | None,
    front_path: Path | None,
    png: Path | None,
    baselines: Path | None,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Show the cached front: predicted and measured figures, and the point a policy chooses.

    The choice is a pure function of the front and the policy, so --policy answers "what
    would this policy deploy?" at once, without searching again.

    \b
    Examples:
        lifelong front
        lifelong front --policy battery-saver
        lifelong front --png front.png --baselines baselines.json
    """
    from lifelong.search.front import Front, choose, plot_front

    if baselines is not None and png is None:
        raise click.UsageError("--baselines is drawn on the plot: give --png too")
    path = front_path or default_front(resolve_state_dir(state_dir))
    if not path.exists():
        raise DataError(f"no front cached at {path}: run `lifelong search` first")
    fr = Front.load(path)
    pol, source = _policy(policy_spec, state_dir)
    chosen = choose(fr, pol)
    batch = pol.target.batch
    if png is not None:
        drawn = load_baselines(baselines) if baselines is not None else None
        plot_front(fr, png, batch=batch, baselines=drawn, chosen=chosen.subnet if chosen is not None else None)
    exported, serving = _registered(resolve_state_dir(state_dir))
    if as_json:
        points: list[dict[str, Any]] = []
        for p in fr.sorted(batch).points:
            d = p.to_dict()
            d["latency_at_batch"] = p.latency_at(batch)
            d["chosen"] = chosen is not None and p.subnet == chosen.subnet
            d["models"] = exported.get(p.subnet, [])
            d["serving"] = serving is not None and serving in d["models"]
            points.append(d)
        doc = {
            "front": str(path),
            "info": fr.info,
            "policy": {"name": pol.name, "source": source, "batch": batch},
            "chosen": chosen.subnet if chosen is not None else None,
            "png": str(png) if png is not None else None,
            "points": points,
        }
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(format_front(fr, pol, chosen, str(path), exported=exported, serving=serving))
    if png is not None:
        click.echo(f"plot -> {png}")


def _registered(state: Path) -> tuple[dict[str, list[str]], str | None]:
    """Registered models by subnet and the serving model's id, read without touching the state."""
    from service.errors import ServiceError
    from service.state.registry import read_current_id
    from service.state.store import registered_subnets

    try:
        serving = read_current_id(state)
    except ServiceError:
        serving = None
    return registered_subnets(state), serving


def _measured(state: Path, predictor: object) -> dict[str, float]:
    """Measured validation top-1 from STATE's predictor data, when it is the predictor's supernet's."""
    from lifelong.predictor.samples import PredictorData
    from lifelong.search.front_search import measured_accuracies

    path = default_predictor_data(state)
    if not path.exists():
        return {}
    try:
        data = PredictorData.load(path)
    except (DataError, FormatVersionError) as exc:
        click.echo(f"warning: measured accuracies not used ({exc})", err=True)
        return {}
    measured, why = measured_accuracies(data, predictor)
    logger.info("%s", why)
    return measured
