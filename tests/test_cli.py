from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lifelong.nn.checkpoint import load_checkpoint
from lifelong.space.config import SearchSpace
from lifelong.train.trainer import supernet_recipe
from service.cli.main import cli


def _commands(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command (``policy check``), groups included."""
    out = []
    for name, command in sorted(group.commands.items()):
        out.append((*prefix, name))
        if isinstance(command, click.Group):
            out += _commands(command, (*prefix, name))
    return out


def test_the_service_commands_exist() -> None:
    names = {" ".join(c) for c in _commands()}
    want = {"serve", "status", "history", "deploy", "rollback", "predict", "policy", "policy check", "policy show"}
    assert want <= names, want - names


@pytest.mark.parametrize("name", _commands(), ids=" ".join)
def test_every_command_has_help_with_an_example(name: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`lifelong {' '.join(name)} --help` shows no example"


def test_space_command_text_and_json() -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["space", "--sample", "2"])
    assert out.exit_code == 0 and "search space:" in out.output and "largest" in out.output
    data = json.loads(runner.invoke(cli, ["space", "--json", "--sample", "1"]).output)
    assert data["size"] == SearchSpace().size() > 10**8 and len(data["subnets"]) == 3
    assert data["subnets"][0]["macs"] > data["subnets"][1]["macs"]


@pytest.mark.slow
def test_train_then_eval_from_the_cli(fashion_train, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["train", "--state-dir", str(tmp_path), "--epochs", "1", "--batch-size", "32", "--max-samples", "64"]
    out = runner.invoke(cli, [*args, "--no-eval"])  # the largest subnet's evaluation takes a minute
    assert out.exit_code == 0, out.output
    assert (tmp_path / "supernet" / "supernet.pt").exists()
    assert "training supernet" in (tmp_path / "logs" / "train.log").read_text()
    ev = runner.invoke(cli, ["eval", "--state-dir", str(tmp_path), "smallest:w8a8", "smallest:w32a32", "--json"])
    assert ev.exit_code == 0, ev.output
    rows = json.loads(ev.stdout)
    assert [r["name"] for r in rows] == ["smallest:w8a8", "smallest:w32a32"]
    assert all(0.0 <= r["top1"] <= 1.0 for r in rows)
    text = runner.invoke(cli, ["eval", "--state-dir", str(tmp_path), "smallest:w8a8"])
    assert text.exit_code == 0 and "smallest:w8a8" in text.output
    # continuing it: into another file, more random subnets a step, the epochs counted on
    base = tmp_path / "supernet" / "supernet.pt"
    same = runner.invoke(cli, [*args, "--init-from", str(base), "--no-eval"])
    assert same.exit_code == 2 and "is the --init-from checkpoint" in same.output
    more = [*args, "--init-from", str(base), "--out", str(tmp_path / "s2.pt"), "--n-random", "2", "--no-eval"]
    cont = runner.invoke(cli, more)
    assert cont.exit_code == 0, cont.output
    ck = load_checkpoint(tmp_path / "s2.pt")
    assert json.loads(ck.train["config"])["n_random"] == 2 and supernet_recipe(ck).epochs == 2


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(cli, ["eval", "--checkpoint", str(tmp_path / "none.pt")])
    assert out.exit_code == 2
    assert out.output.strip().startswith("error: no checkpoint at") and "Traceback" not in out.output
    bad = runner.invoke(cli, ["eval", "--checkpoint", str(tmp_path / "none.pt"), "c32.k3w8a8_nonsense"])
    assert bad.exit_code == 2
    data = runner.invoke(cli, ["train", "--state-dir", str(tmp_path), "--data", str(tmp_path / "missing.npz")])
    assert data.exit_code == 2 and data.output.startswith("training") is False and "error:" in data.output
