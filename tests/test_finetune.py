from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny_space import TINY_SPACE

from lifelong.errors import TrainingError
from lifelong.nn.checkpoint import Checkpoint, save_checkpoint
from lifelong.nn.supernet import Supernet, init_quantizers, recalibrate_bn
from lifelong.space.config import Precision, SearchSpace
from lifelong.train.finetune import FinetuneConfig, finetune_subnet
from lifelong.train.trainer import TrainConfig
from policies import parse_policy_text
from service.cli.main import cli

W8A8 = Precision(8, 8)


class _Clock:
    """A clock that moves one second per reading: the budget counts steps, not load."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@pytest.fixture(scope="module")
def tiny(fashion_train) -> tuple[Supernet, torch.Tensor, torch.Tensor, np.ndarray]:
    torch.manual_seed(0)
    model = Supernet(SearchSpace(TINY_SPACE))
    data = fashion_train.head(512)
    x = torch.from_numpy(data.as_float())
    init_quantizers(model, x[:64])
    return model, x, torch.from_numpy(data.y.astype(np.int64)), data.as_float()[:256]


def test_finetune_trains_within_its_budget_and_ends_calibrated(tiny) -> None:
    model, x, y, calib = tiny
    sub = model.get_subnet(model.space.largest(W8A8))
    recalibrate_bn(sub, calib)
    before = [p.detach().clone() for p in sub.parameters()]
    step_before = float(sub.convs[0].wq.step(8)[0].detach())
    result = finetune_subnet(
        sub, x, y, calib, FinetuneConfig(seconds=12, batch_size=64), progress=False, clock=_Clock()
    )
    # the clock is read twice a step (budget, progress) and once at the start and the end
    assert 3 <= result.steps <= 6 and result.images == result.steps * 64
    assert np.isfinite(result.loss_last)
    assert any(not torch.equal(a, b) for a, b in zip(before, sub.parameters(), strict=True))
    assert float(sub.convs[0].wq.step(8)[0].detach()) != step_before, "the learned quantizer trains too"
    assert not sub.training
    bn = sub.convs[0].bn  # re-estimated on the calibration images: an exact average, one batch
    assert int(bn.num_batches_tracked) == 1


def test_finetune_lowers_the_loss_on_real_data(tiny) -> None:
    model, x, y, calib = tiny
    sub = model.get_subnet(model.space.smallest(W8A8))
    recalibrate_bn(sub, calib)
    r = finetune_subnet(sub, x, y, calib, FinetuneConfig(seconds=3600, lr=0.05, batch_size=64), progress=False,
                        max_steps=40)  # fmt: skip
    assert r.steps == 40 and r.loss_last < r.loss_first - 0.2, r


def test_finetune_config_reports_every_problem() -> None:
    with pytest.raises(TrainingError, match="seconds must be") as err:
        FinetuneConfig(seconds=0, lr=-1, batch_size=1)
    assert "lr must be" in str(err.value) and "batch_size must be" in str(err.value)


@pytest.mark.slow
def test_finetune_command_shows_the_gain_and_exports(tiny, fashion_train, tmp_path: Path) -> None:
    model, *_ = tiny
    recipe = TrainConfig(val_fraction=0.9, seed=3)  # a small training split keeps the test fast
    ckpt = save_checkpoint(
        tmp_path / "s.pt",
        Checkpoint(TINY_SPACE, model.state_dict(), train={"complete": True, "config": json.dumps(recipe.to_dict())}),
    )
    out = tmp_path / "ft.onnx"
    args = ["finetune", "smallest:w8a8", "--checkpoint", str(ckpt), "--seconds", "3", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--parity-images", "300", "--calib", "200", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    ft = report["finetune"]
    assert ft["steps"] > 0 and ft["val_images"] == 54_000
    assert 0 <= ft["val_top1_before"] <= 1 and 0 <= ft["val_top1_after"] <= 1  # the gain: the test above
    assert out.is_file() and report["parity"]["agreement"] >= 0.995
    bad = CliRunner().invoke(cli, ["finetune", "nonsense", "--checkpoint", str(ckpt)])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_the_policy_sets_the_export_workers_finetuning() -> None:
    policy = parse_policy_text("format_version = 1\n[export]\nfinetune_seconds = 120\n")
    assert policy.export.finetune_seconds == 120.0
    with pytest.raises(Exception, match="export.finetune_seconds"):
        parse_policy_text("format_version = 1\n[export]\nfinetune_seconds = -5\n")
