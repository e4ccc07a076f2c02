"""The predictor's data (real evaluations of a tiny supernet), its file, the build and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from search_helpers import SPACE, samples, structured_profile, true_accuracy
from tiny_space import TINY_SPACE

from lifelong.data.datasets import ArrayDataset
from lifelong.device.latency_table import LatencyTable
from lifelong.errors import DataError, FormatVersionError
from lifelong.nn.checkpoint import Checkpoint, file_sha256, save_checkpoint
from lifelong.nn.supernet import Supernet, init_quantizers
from lifelong.predictor.build import MIN_CORNER_HOLDOUT, BuildSettings, build_predictor
from lifelong.predictor.features import SubnetFeatures
from lifelong.predictor.mlp import AccuracyPredictor, PredictorConfig
from lifelong.predictor.samples import (
    CORNER_MUTATION,
    PREDICTOR_DATA_FORMAT,
    CollectSettings,
    PredictorData,
    Provenance,
    Sample,
    calibration_images,
    collect_predictor_data,
    corner_subnet,
    label_noise,
    planned_subnets,
)
from lifelong.search.evaluator import PredictorEvaluator
from lifelong.space.config import Precision, SearchSpace, SpaceConfig, SubnetConfig
from lifelong.train.evaluate import evaluate_subnet
from service.cli.main import cli

SPLIT = {"val_fraction": 0.25, "seed": 3}  # what the tiny checkpoint says its training held out
FAST = PredictorConfig(lr=3e-3, max_epochs=60, patience=15)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A tiny supernet checkpoint (random weights, quantizers initialised, BN moved) and data."""
    torch.manual_seed(0)
    model = Supernet(SearchSpace(TINY_SPACE))
    init_quantizers(model, torch.rand(16, 1, 28, 28))
    rng = np.random.default_rng(0)
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model.sample_active_subnet(rng)
            model(torch.rand(8, 1, 28, 28))
    root = tmp_path_factory.mktemp("tiny")
    ckpt = save_checkpoint(
        root / "supernet.pt",
        Checkpoint(TINY_SPACE, model.state_dict(), train={"config": json.dumps(SPLIT)}, meta={"train_samples": 150}),
    )
    x = rng.integers(0, 256, (200, 28, 28), dtype=np.uint8)
    y = np.arange(200) % 10
    np.savez(root / "data.npz", x=x, y=y)
    return {"ckpt": ckpt, "data": ArrayDataset(x, y, tuple("abcdefghij"), "tiny"), "npz": root / "data.npz"}


def _collect(tiny: dict, out: Path, **kw: object) -> PredictorData:
    stop = kw.pop("stop_after", None)
    settings = CollectSettings(**{"fp": 2, "quant": 2, "calib": 32, "threads": 1, **kw})
    return collect_predictor_data(tiny["ckpt"], out, settings, train_data=tiny["data"], progress=False, stop_after=stop)


def test_collect_evaluates_the_planned_subnets_on_the_split_training_held_out(tiny, tmp_path: Path) -> None:
    out = tmp_path / "samples.json"
    data = _collect(tiny, out, fp=3, quant=3)
    assert PredictorData.load(out) == data
    raw = json.loads(out.read_text())
    assert raw["kind"] == "lifelong-predictor-data" and raw["format_version"] == PREDICTOR_DATA_FORMAT
    space = SearchSpace(TINY_SPACE)
    for kind in ("fp", "quant"):
        cfgs, top1 = data.subnets(kind)
        assert [str(c) for c in cfgs] == [str(c) for c in planned_subnets(space, kind, 3, seed=0)]
        assert ((top1 >= 0) & (top1 <= 1)).all()
    fp_cfgs, _ = data.subnets("fp")
    q_cfgs, _ = data.subnets("quant")
    assert all(p.is_full for c in fp_cfgs for p in c.layer_precisions())
    assert any(not p.is_full for c in q_cfgs for p in c.layer_precisions())
    p = data.provenance
    assert p == Provenance(file_sha256(tiny["ckpt"]), "tiny", 0.25, 3, 50, 32, 0)
    assert all(s.seconds > 0 and s.cpu_seconds > 0 for s in data.samples) and data.cost()["evaluations"] == 6
    assert all(s.halves is not None and (s.halves[0] + s.halves[1]) / 2 == pytest.approx(s.top1) for s in data.samples)
    assert label_noise(data.samples) is not None and label_noise(data.samples[:2]) is None
    # each accuracy is top-1 on the split training held out (fraction 0.25, seed 3), with BN
    # re-calibrated on the seeded training images: recompute one independently
    train_part, val_part = tiny["data"].split(0.25, seed=3)
    model = Supernet(SearchSpace(TINY_SPACE))
    model.load_state_dict(torch.load(tiny["ckpt"], weights_only=True)["state_dict"])
    ev, _ = evaluate_subnet(model, q_cfgs[1], calibration_images(train_part, 32, 0), val_part.as_float(), val_part.y)
    assert ev.top1 == data.of("quant")[1].top1


def test_resume_skips_done_work_and_extends_the_plan(tiny, tmp_path: Path) -> None:
    out = tmp_path / "samples.json"
    first = _collect(tiny, out, stop_after=3)  # killed after 3 of 4 evaluations
    assert len(PredictorData.load(out).samples) == 3
    resumed = _collect(tiny, out)
    assert resumed.samples[:3] == first.samples, "done samples are kept as they were, not evaluated again"
    assert sorted((s.kind, s.index) for s in resumed.samples) == [("fp", 0), ("fp", 1), ("quant", 0), ("quant", 1)]
    assert _collect(tiny, out).samples == resumed.samples  # nothing left to do
    extended = _collect(tiny, out, fp=3)
    new = extended.samples[4]
    assert extended.samples[:4] == resumed.samples and (new.kind, new.index) == ("fp", 2)
    with pytest.raises(DataError, match=r"other settings \(calib_images: 16 \(held: 32\)"):
        _collect(tiny, out, calib=16)


def test_a_second_collection_into_the_same_file_is_refused(tiny, tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "samples.json"
    with open(tmp_path / ".samples.json.lock", "a+") as held:  # as a running collection holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DataError, match=r"another `lifelong predictor collect` is writing this file"):
            _collect(tiny, out)
        assert not out.exists()
    assert len(_collect(tiny, out, stop_after=1).samples) == 1  # free again once it ends


def test_collect_refuses_bad_settings_and_a_checkpoint_without_a_split(tiny, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="calib must be >= 1"):
        CollectSettings(calib=0)
    with pytest.raises(DataError, match=r"corner must be >= 0 subnets \(0: none\), got -1"):
        CollectSettings(corner=-1)
    with pytest.raises(DataError, match=r"kind must be one of \('fp', 'quant', 'corner'\), got 'corners'"):
        planned_subnets(SearchSpace(TINY_SPACE), "corners", 1, seed=0)
    with pytest.raises(DataError, match="asked for 500 validation"):
        _collect(tiny, tmp_path / "a.json", val=500)
    ck = torch.load(tiny["ckpt"], weights_only=True)
    bare = save_checkpoint(tmp_path / "bare.pt", Checkpoint(TINY_SPACE, ck["state_dict"]))
    with pytest.raises(DataError, match="no validation split"):
        collect_predictor_data(bare, tmp_path / "b.json", CollectSettings(fp=1, quant=0), train_data=tiny["data"])


def _extremes(space: SearchSpace) -> list[str]:
    """The corners the corner stream must open with, in its order (written out independently)."""
    return [str(f(p)) for f in (space.largest, space.smallest) for p in space.precisions]


@pytest.mark.parametrize(
    "space", [SPACE, SearchSpace(TINY_SPACE), SearchSpace(replace(TINY_SPACE, min_stages=1, hiddens=(16,)))]
)
def test_corner_stream_opens_with_the_extremes_then_neighbours_of_the_largest(space: SearchSpace) -> None:
    n_extremes = 2 * len(space.precisions)
    plan = [str(c) for c in planned_subnets(space, "corner", n_extremes + 60, seed=0)]
    assert plan[:n_extremes] == _extremes(space), "largest then smallest, every precision"
    assert str(space.largest(Precision(8, 8))) in plan[: len(space.precisions)]
    assert len(set(plan)) == len(plan), "distinct subnets only"
    assert plan == [str(c) for c in planned_subnets(space, "corner", n_extremes + 60, seed=0)], "deterministic"
    assert [str(c) for c in planned_subnets(space, "corner", n_extremes + 7, seed=0)] == plan[: n_extremes + 7]
    other = [str(c) for c in planned_subnets(space, "corner", n_extremes + 60, seed=1)]
    assert other[:n_extremes] == plan[:n_extremes] and other[n_extremes:] != plan[n_extremes:]
    # the neighbours: valid, near the largest subnet (larger than uniform draws), every precision mix
    neighbours = [space.parse(c) for c in plan[n_extremes:]]
    uniform = planned_subnets(space, "quant", 60, seed=0)
    depth = lambda cfgs: np.mean([sum(s.depth for s in c.stages) for c in cfgs])  # noqa: E731
    width = lambda cfgs: np.mean([sum(s.width for s in c.stages) for c in cfgs])  # noqa: E731
    assert depth(neighbours) > depth(uniform) and width(neighbours) > width(uniform)
    mixes = [{str(p) for p in c.layer_precisions()} for c in neighbours]
    assert any(len(m) == 1 for m in mixes) and any(len(m) >= 2 for m in mixes), "uniform and mixed precisions"
    assert set().union(*mixes) == {str(p) for p in space.precisions}
    assert not set(plan) & {str(c) for c in uniform}


def _arch_genes(cfg: SubnetConfig) -> list[int]:
    stages = [*cfg.stages, *[None] * (3 - len(cfg.stages))]
    return [*(s.width if s else 0 for s in stages), *(s.depth if s else 0 for s in stages)]


def test_corner_subnet_mutates_the_largest_with_a_random_precision_mix() -> None:
    rng = np.random.default_rng(5)
    largest = _arch_genes(SPACE.largest())
    cfgs = [SPACE.validate(corner_subnet(SPACE, rng)) for _ in range(200)]
    changed = [sum(a != b for a, b in zip(_arch_genes(c), largest, strict=True)) for c in cfgs]
    # each of the 6 width and depth genes is resampled with a probability drawn from
    # CORNER_MUTATION (a resample may keep the value): on average about 1 changes, never most
    assert 0.5 < np.mean(changed) < CORNER_MUTATION[1] * len(largest), np.mean(changed)
    assert sum(n == 0 for n in changed) > 20, "many neighbours keep the largest architecture"
    assert max(changed) < len(largest)


def test_collect_corner_samples_resumes_and_extends(tiny, tmp_path: Path) -> None:
    out = tmp_path / "samples.json"
    first = _collect(tiny, out, fp=1, quant=1, corner=3, stop_after=3)  # killed after 3 of 5 evaluations
    assert [(s.kind, s.index) for s in first.samples] == [("fp", 0), ("quant", 0), ("corner", 0)]
    resumed = _collect(tiny, out, fp=1, quant=1, corner=3)
    assert resumed.samples[:3] == first.samples and len(resumed.samples) == 5
    extended = _collect(tiny, out, fp=1, quant=1, corner=5)
    assert extended.samples[:5] == resumed.samples
    space = SearchSpace(TINY_SPACE)
    cfgs, top1 = extended.subnets("corner")
    assert [str(c) for c in cfgs] == [str(c) for c in planned_subnets(space, "corner", 5, seed=0)]
    assert str(cfgs[0]) == str(space.largest(space.precisions[0])) and ((top1 >= 0) & (top1 <= 1)).all()
    assert extended.cost()["corner"]["evaluations"] == 5 and PredictorData.load(out) == extended


def _data_file(path: Path, **changes: object) -> Path:
    prov = Provenance("0" * 64, "t", 0.1, 0, 10, 10, 0)
    doc = PredictorData(
        TINY_SPACE, prov, (Sample("fp", 0, str(SearchSpace(TINY_SPACE).largest()), 0.5, 1.0),)
    ).to_dict()
    doc.update(changes)
    path.write_text(json.dumps(doc))
    return path


def test_unreadable_foreign_future_and_malformed_files_are_named(tmp_path: Path) -> None:
    assert len(PredictorData.load(_data_file(tmp_path / "ok.json")).samples) == 1
    with pytest.raises(DataError, match="no predictor data at .*lifelong predictor collect"):
        PredictorData.load(tmp_path / "missing.json")
    (tmp_path / "cut.json").write_text(_data_file(tmp_path / "x.json").read_text()[:50])
    with pytest.raises(DataError, match="cut.json is not readable predictor data"):
        PredictorData.load(tmp_path / "cut.json")
    with pytest.raises(DataError, match="is not lifelong predictor data"):
        PredictorData.load(_data_file(tmp_path / "f.json", kind="lifelong-front"))
    with pytest.raises(FormatVersionError, match="format version 99.*reads version 1. Collect it again"):
        PredictorData.load(_data_file(tmp_path / "v.json", format_version=99))
    with pytest.raises(DataError, match="malformed: sample .*top1 and halves in \\[0, 1\\]"):
        PredictorData.load(
            _data_file(
                tmp_path / "s.json", samples=[{"kind": "fp", "index": 0, "subnet": "x", "top1": 2, "seconds": 1}]
            )
        )
    with pytest.raises(DataError, match="malformed: 'provenance' must be a table, found NoneType"):
        PredictorData.load(_data_file(tmp_path / "p.json", provenance=None))


def _synthetic_data(n_fp: int, n_quant: int, half_noise: float = 0.004, n_corner: int = 0) -> PredictorData:
    """Evaluations of the default space with a known accuracy (tests/search_helpers), each
    validation half adding its own noise of std ``half_noise``."""
    fp = [c.with_precision(Precision()) for c in samples(n_fp, seed=71)]
    q = samples(n_quant, seed=72)
    corner = planned_subnets(SPACE, "corner", n_corner, seed=0)
    rng = np.random.default_rng(73)
    out = []
    kinds = [("fp", fp, true_accuracy(fp)), ("quant", q, true_accuracy(q, quantized=True))]
    kinds += [("corner", corner, true_accuracy(corner, quantized=True))] if corner else []
    for kind, cfgs, acc in kinds:
        for i, (c, a) in enumerate(zip(cfgs, acc, strict=True)):
            h1, h2 = np.clip(a + rng.normal(0, half_noise, 2), 0, 1)
            seconds = 2.0 if kind == "fp" else 5.0
            out.append(Sample(kind, i, str(c), float((h1 + h2) / 2), seconds, 2 * seconds, (float(h1), float(h2))))
    return PredictorData(SPACE.config, Provenance("a" * 64, "synthetic", 0.1, 0, 5000, 1000, 0), tuple(out))


def test_build_trains_on_fp_transfers_and_reports_on_the_holdout(tmp_path: Path) -> None:
    data = _synthetic_data(300, 140)
    model, report = build_predictor(data, BuildSettings(holdout=60, compare_at=(20,), config=FAST))
    assert (report.fp_samples, report.quant_train, report.holdout) == (300, 80, 60)
    # a hard synthetic truth at these sizes (tau about 0.5); random ranking would give 0
    assert report.transfer.n == 60 and report.transfer.kendall_tau > 0.35, report.transfer
    assert report.transfer.rmse_pt < report.fp_only.rmse_pt, "the transfer learned the quantized shift"
    assert 0 < report.transfer.rmse_pt < 3 * report.holdout_top1_std_pt
    assert [c["quant_samples"] for c in report.comparison] == [20, 80]
    assert report.data_cost["evaluations"] == 440 and report.data_cost["seconds"] == 300 * 2.0 + 140 * 5.0
    assert report.data_cost["quant"]["seconds_per_evaluation"] == 5.0 and report.data_cost["cpu_seconds"] == 2600
    # halves with noise 0.4 pt each: a full-set label has 0.4 / sqrt(2) = 0.28 pt
    assert report.label_noise_pt == pytest.approx(0.4 / np.sqrt(2), rel=0.2)
    assert report.transfer.kendall_tau < report.tau_ceiling < 1
    # the holdout is the last 60 quantized samples: the report's tau is recomputed from them
    cfgs, y = data.subnets("quant")
    X = SubnetFeatures(SPACE)(cfgs[80:])
    assert model.evaluate(X, y[80:])["kendall_tau"] == pytest.approx(report.transfer.kendall_tau)
    path = model.save(tmp_path / "predictor.npz")
    loaded = AccuracyPredictor.load(path)
    assert loaded.meta["report"]["transfer"] == json.loads(json.dumps(report.to_dict()))["transfer"]
    assert SpaceConfig.from_dict(loaded.meta["space"]) == SPACE.config and loaded.meta["checkpoint_sha256"] == "a" * 64
    # what the search does with it: the evaluator accepts its features and predicts
    ev = PredictorEvaluator(loaded, LatencyTable(structured_profile(), SPACE))
    assert len(ev.evaluate(cfgs[:5]).accuracy) == 5


def test_measured_subnets_keep_their_measurement_in_the_search() -> None:
    """The predictor is smooth: it rates the largest subnet's neighbours near the largest. The
    subnets the data measured get their measurement, and only with the predictor's checkpoint."""
    from lifelong.search.front_search import SearchSettings, measured_accuracies, search_front
    from policies import load_preset

    data = _synthetic_data(150, 140, n_corner=30)
    model, _ = build_predictor(data, BuildSettings(holdout=60, compare_at=(20,), config=FAST))
    measured, why = measured_accuracies(data, model)
    assert len(measured) == len({s.subnet for s in data.samples}) and "measured" in why
    corners, y = data.subnets("corner")
    table = LatencyTable(structured_profile(), SPACE)
    predicted = PredictorEvaluator(model, table).evaluate(corners).accuracy
    ev = PredictorEvaluator(model, table, measured=measured)
    assert np.array_equal(ev.evaluate(corners).accuracy, y)
    assert not np.allclose(predicted, y, atol=1e-4), "the predictions differ from the measurements"
    unseen = samples(5, seed=999)
    assert np.array_equal(ev.evaluate(unseen).accuracy, PredictorEvaluator(model, table).evaluate(unseen).accuracy)
    # another checkpoint's measurements are not used
    other = replace(data, provenance=replace(data.provenance, checkpoint_sha256="b" * 64))
    assert measured_accuracies(other, model)[0] == {}
    # in the search: a corner measured above every prediction is on the front, with its measurement
    best = str(corners[0])  # the largest inverted-residual subnet at the lowest precision
    measured[best] = 0.999
    settings = SearchSettings(evaluations=400, population=40, seed=1)
    found = search_front(
        model, structured_profile(), load_preset("balanced"), space=SPACE, settings=settings, measured=measured
    )
    assert found.front.info["measured_subnets"] == len(measured)
    assert best in {p.subnet for p in found.front.points}
    assert found.front[best].accuracy == pytest.approx(0.999)
    assert max(p.accuracy for p in found.front.points) == pytest.approx(0.999)
    # the front says which of its accuracies are measurements, and `lifelong front` labels them
    on_validation = found.front.info["validation_measured"]
    assert best in on_validation and set(on_validation) <= set(measured)
    assert set(on_validation) == {p.subnet for p in found.front.points if p.subnet in measured}
    from service.cli.search import _point_line, format_front

    table = format_front(found.front, load_preset("balanced"), found.front[best])
    (row,) = [line for line in table.splitlines() if line.endswith(best)]
    assert "99.90%v" in row and "v = measured top-1 (validation or local samples), not predicted" in table
    assert "(measured, not predicted)" in _point_line(found.front[best], 1, set(on_validation))
    others = [p for p in found.front.points if p.subnet not in measured]
    assert not others or "(predicted)" in _point_line(others[0], 1, set(on_validation))


def test_build_trains_on_corners_but_reports_them_apart_from_the_quantized_holdout() -> None:
    settings = BuildSettings(holdout=60, compare_at=(20,), config=FAST)
    data = _synthetic_data(150, 140, n_corner=60)
    model, report = build_predictor(data, settings)
    # 60 corners: the last 20% (12, neighbours of the largest: the 24 extremes come first) held out
    assert (report.quant_train, report.holdout, report.corner_train, report.corner_holdout) == (80, 60, 48, 12)
    assert report.fits["transfer"]["n_train"] + report.fits["transfer"]["n_val"] == 80 + 48, "corners trained on"
    assert report.fits["scratch"]["n_train"] + report.fits["scratch"]["n_val"] == 80 + 48
    assert [(c["quant_samples"], c["corner_samples"]) for c in report.comparison] == [(20, 48), (80, 48)]
    assert model.meta["trained_on"] == "150 fp, transferred to 80 quant + 48 corner"
    # the quantized holdout is the last 60 uniform samples, as without corners; the corner
    # figures are on the last 12 corner samples
    features = SubnetFeatures(SPACE)
    q_cfgs, y_q = data.subnets("quant")
    assert report.transfer.n == 60
    assert model.evaluate(features(q_cfgs[80:]), y_q[80:])["kendall_tau"] == pytest.approx(report.transfer.kendall_tau)
    c_cfgs, y_c = data.subnets("corner")
    corner = report.corner
    assert corner is not None and corner.transfer.n == corner.scratch.n == corner.fp_only.n == 12
    assert corner.transfer.rmse_pt == pytest.approx(100 * model.evaluate(features(c_cfgs[48:]), y_c[48:])["rmse"])
    assert corner.top1_mean_pt == pytest.approx(100 * y_c[48:].mean())
    assert corner.bias_pt == pytest.approx(100 * (model.predict(features(c_cfgs[48:])) - y_c[48:]).mean())
    assert report.data_cost["corner"]["evaluations"] == 60
    # what the corners are for: without them the held-out corner subnets are predicted worse
    # (measured: RMSE 0.9 pt with them, 3.2 pt without)
    alone, _ = build_predictor(_synthetic_data(150, 140), replace(settings, compare_at=()))
    rmse_alone = 100 * alone.evaluate(features(c_cfgs[48:]), y_c[48:])["rmse"]
    assert corner.transfer.rmse_pt < rmse_alone, (corner.transfer.rmse_pt, rmse_alone)
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["corner"]["transfer"]["n"] == 12 and doc["corner_holdout"] == 12


def test_build_holds_no_corners_out_when_too_few_and_rejects_a_bad_share() -> None:
    n = 5 * MIN_CORNER_HOLDOUT - 1  # 20% of it is one short of the minimum
    _, report = build_predictor(
        _synthetic_data(30, 14, n_corner=n), BuildSettings(holdout=6, compare_at=(), config=FAST)
    )
    assert (report.corner_train, report.corner_holdout, report.corner) == (n, 0, None)
    assert (report.quant_train, report.holdout, report.transfer.n) == (8, 6, 6)
    for bad in (1.0, -0.1):
        with pytest.raises(DataError, match=r"corner_holdout must be a share in \[0, 1\) of the corner samples"):
            BuildSettings(corner_holdout=bad)


def test_build_refuses_too_few_samples() -> None:
    with pytest.raises(DataError, match="more than holdout \\+ 2 = 202 quantized samples"):
        build_predictor(_synthetic_data(20, 100))
    with pytest.raises(DataError, match="at least 10 full-precision"):
        build_predictor(_synthetic_data(5, 100), BuildSettings(holdout=10))


def test_cli_collect_build_show(tiny, tmp_path: Path) -> None:
    runner, state = CliRunner(), tmp_path / "state"
    base = ["--state-dir", str(state)]
    collect = ["predictor", "collect", "--checkpoint", str(tiny["ckpt"]), "--train-data", str(tiny["npz"])]
    collect += ["--fp", "10", "--quant", "6", "--calib", "32", "--threads", "1", "--quiet", *base]
    r = runner.invoke(cli, collect)
    assert r.exit_code == 0, r.output
    assert "10 fp + 6 quantized subnets" in r.output and (state / "predictor" / "samples.json").exists()
    r = runner.invoke(cli, ["predictor", "build", "--holdout", "3", *base])
    assert r.exit_code == 0, r.output
    assert "Kendall tau" in r.output and "quantized samples alone" in r.output
    assert (state / "predictor" / "predictor.npz").exists()
    r = runner.invoke(cli, ["predictor", "show", "--json", *base])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["report"]["holdout"] == 3 and doc["report"]["data_cost"]["evaluations"] == 16
    assert set(doc["report"]["transfer"]) == {"kendall_tau", "rmse_pt", "n"}
    r = runner.invoke(cli, ["predictor", "show", *base])
    assert r.exit_code == 0 and "FP-trained + transferred (saved)" in r.output
    r = runner.invoke(cli, ["predictor", "build", "--data", str(tmp_path / "none.json"), *base])
    assert r.exit_code == 2 and "error: no predictor data at" in r.output


def test_cli_collect_extends_a_file_with_corners_and_reports_them(tiny, tmp_path: Path) -> None:
    runner, state = CliRunner(), tmp_path / "state"
    base = ["--state-dir", str(state)]
    collect = ["predictor", "collect", "--checkpoint", str(tiny["ckpt"]), "--train-data", str(tiny["npz"])]
    collect += ["--fp", "10", "--quant", "6", "--calib", "32", "--threads", "1", "--quiet", *base]
    r = runner.invoke(cli, collect)
    assert r.exit_code == 0 and "corner" not in r.output, r.output
    path = state / "predictor" / "samples.json"
    before = PredictorData.load(path).samples
    r = runner.invoke(cli, [*collect, "--corner", "25"])
    assert r.exit_code == 0, r.output
    assert "10 fp + 6 quantized subnets + 25 corner subnets" in r.output and "corner " in r.output.split("(")[-1]
    after = PredictorData.load(path).samples
    assert after[:16] == before and len(after) == 41, "the uniform samples are kept, only the corners evaluated"
    r = runner.invoke(cli, ["predictor", "build", "--holdout", "3", *base])
    assert r.exit_code == 0, r.output
    assert "held-out corner subnets: 5 (top-1" in r.output and "3 quantized + 20 corner samples" in r.output
    r = runner.invoke(cli, ["predictor", "show", "--json", *base])
    doc = json.loads(r.output)["report"]
    assert (doc["holdout"], doc["quant_train"], doc["corner_holdout"], doc["corner_train"]) == (3, 3, 5, 20)
    assert doc["transfer"]["n"] == 3 and doc["corner"]["transfer"]["n"] == 5
    r = runner.invoke(cli, ["predictor", "show", *base])
    assert r.exit_code == 0 and "held-out corner subnets: 5" in r.output and "bias" in r.output
    r = runner.invoke(cli, ["predictor", "build", "--holdout", "3", "--corner-holdout", "0", *base])
    assert r.exit_code == 0 and "held-out corner subnets: none" in r.output, r.output
    r = runner.invoke(cli, [*collect, "--corner", "-1"])
    assert r.exit_code == 2 and "Invalid value for '--corner'" in r.output
    r = runner.invoke(cli, ["predictor", "build", "--corner-holdout", "1", *base])
    assert r.exit_code == 2 and "Invalid value for '--corner-holdout'" in r.output
    r = runner.invoke(cli, ["predictor", "collect", "--help"])
    assert "--corner" in r.output and "largest and smallest" in r.output


def test_predictor_modules_and_cli_do_not_import_torch() -> None:
    code = (
        "import sys, lifelong.predictor.samples, lifelong.predictor.build, service.cli.predictor; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
