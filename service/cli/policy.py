"""``lifelong policy``: check and show policy files and the shipped presets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from service.state.paths import resolve_state_dir

__all__ = ["policy"]


@click.group()
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
    from service.state.paths import default_policy

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
