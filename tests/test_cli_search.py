"""``lifelong search`` and ``lifelong front`` end to end, the algorithm comparison and its benchmark.

The inputs are real files of the real formats: an accuracy predictor fitted (briefly) on the
known synthetic accuracy of :mod:`search_helpers`, and that module's structured device
profile, saved where the commands look for them.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from benchmark_modules import load
from click.testing import CliRunner, Result
from search_helpers import CODEC, COSTS, SPACE, landscape, samples, structured_profile, true_accuracy

from lifelong.device.profile import DeviceProfile
from lifelong.predictor.features import SubnetFeatures
from lifelong.predictor.mlp import AccuracyPredictor, PredictorConfig
from lifelong.search.front import Front, choose
from lifelong.search.front_search import SearchSettings, file_sha256, search_front, space_hash
from lifelong.search.reference import reference_point
from policies import PolicyValidationError, load_policy, load_preset
from service.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = load("search_baselines").ALGORITHMS
compare_algorithms = load("search_baselines").compare_algorithms
BUDGET, POPULATION = 1500, 30

# Binding budgets for the structured profile (latency 0.07-0.22 ms, 15 kB-3.5 MB of weights).
TIGHT = """format_version = 1
name = "tight"

[budgets]
latency_ms_p95 = 0.13
model_bytes = 400_000

[objective]
kind = "max-accuracy"
"""
TIGHTER = TIGHT.replace('"tight"', '"tighter"').replace("0.13", "0.09")


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory holding a small fitted predictor, a profile and two policy files."""
    root = tmp_path_factory.mktemp("state")
    features = SubnetFeatures(SPACE, codec=CODEC, costs=COSTS)
    cfgs = samples(300, seed=21)
    predictor = AccuracyPredictor(
        features.length, PredictorConfig(hidden=(32,), max_epochs=30, patience=10), meta={"features": features.name}
    )
    predictor.fit(features(cfgs), true_accuracy(cfgs))
    predictor.save(root / "predictor" / "predictor.npz")
    structured_profile().save(root / "profile" / "device.json")
    (root / "tight.toml").write_text(TIGHT)
    (root / "tighter.toml").write_text(TIGHTER)
    return root


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _search(state: Path, *args: str | Path, seed: int = 1, budget: int = BUDGET) -> Result:
    return _invoke(
        "search", "--state-dir", state, "--policy", state / "tight.toml",
        "--budget", budget, "--population", POPULATION, "--seed", seed, "--measure", 0, *args,
    )  # fmt: skip


@pytest.fixture(scope="module")
def searched(state: Path) -> dict[str, object]:
    """One cold search into the state's front cache, with --json."""
    result = _search(state, "--no-warm-start", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- lifelong search -----------------------------------------------------------------------------
def test_search_saves_the_front_with_its_record_and_prints_the_policys_choice(
    state: Path, searched: dict[str, object]
) -> None:
    path = state / "front" / "front.json"
    assert searched["front"] == str(path)
    front = Front.load(path)
    info = front.info
    assert searched["record"] == info and searched["points"] == len(front) > 5
    assert (info["algorithm"], info["seed"], info["budget"], info["population"]) == ("nsga2", 1, BUDGET, POPULATION)
    assert info["evaluations"] == BUDGET and info["warm_started"] == 0
    assert info["evaluator_evaluations_per_s"] > info["evaluations_per_s"] > 0
    assert info["policy"] == "tight" and info["policy_source"] == str(state / "tight.toml") and info["batch"] == 1
    assert info["predictor_sha256"] == file_sha256(state / "predictor" / "predictor.npz")
    assert info["profile_sha256"] == file_sha256(state / "profile" / "device.json")
    assert info["space_hash"] == space_hash(SPACE) and info["hypervolume"] > 0
    # the policy's budgets are hard constraints; every point carries latency at every profiled batch
    for p in front.points:
        assert p.latency_at(1) <= 0.13 and p.model_bytes <= 400_000, p
        assert dict(p.latency_ms).keys() == {1, 32}
    # the printed choice is choose() on the saved front
    chosen = choose(front, load_policy(state / "tight.toml"))
    assert chosen is not None and searched["chosen"] == chosen.to_dict()
    # the file round-trips exactly
    assert Front.load(path).to_dict() == json.loads(path.read_text())
    copy = Front.load(path).save(state / "copy.json")
    assert copy.read_text() == path.read_text()


def test_same_seed_same_front_and_a_readable_summary(state: Path, searched: dict[str, object]) -> None:
    again = _search(state, "--no-warm-start", "--out", state / "again.json")
    assert again.exit_code == 0, again.output
    first, second = Front.load(state / "front" / "front.json"), Front.load(state / "again.json")
    assert first.points == second.points
    chosen = choose(second, load_policy(state / "tight.toml"))
    assert "policy 'tight' (max-accuracy; batch 1, latency <= 0.13 ms, model <= 400 kB) chooses:" in again.output
    assert f"  {chosen.subnet}: accuracy {100 * chosen.accuracy:.2f}% (predicted)" in again.output
    assert f"front: {len(second)} points -> {state / 'again.json'}" in again.output
    assert f"[search] |{'#' * 24}| 100.0% {BUDGET}/{BUDGET}" in again.output, "no progress bar"


def test_warm_start_uses_the_cached_front_of_the_same_space_only(state: Path, searched: dict[str, object]) -> None:
    cached = state / "warm.json"
    shutil.copy(state / "front" / "front.json", cached)
    n = len(Front.load(cached))
    warm = _search(state, "--out", cached, "--json", seed=2, budget=300)
    assert warm.exit_code == 0, warm.output
    doc = json.loads(warm.stdout)
    assert doc["record"]["warm_started"] == min(n, POPULATION) > 0
    assert doc["record"]["cached_front"] == str(cached)
    # a front from another search space is not used, and the search says why
    other = Front.load(cached)
    Front(other.points, {**other.info, "space_hash": "0123456789abcdef"}).save(cached)
    cold = _search(state, "--out", cached, seed=2, budget=100)
    assert cold.exit_code == 0, cold.output
    assert "no warm start: the cached front comes from another search space ('0123456789abcdef'" in cold.output
    assert Front.load(cached).info["warm_started"] == 0
    off = _search(state, "--out", cached, "--no-warm-start", "--json", seed=2, budget=100)
    assert json.loads(off.stdout)["record"]["warm_started"] == 0
    # a broken cache is replaced, with a warning
    cached.write_text("{broken")
    broken = _search(state, "--out", cached, seed=2, budget=100)
    assert broken.exit_code == 0, broken.output
    assert f"warning: the cached front was not read ({cached} is not a readable front" in broken.output
    assert len(Front.load(cached)) > 0


def test_a_warm_start_keeps_the_cached_points_and_their_measurements(state: Path, searched: dict[str, object]) -> None:
    """With the cached front as the whole first population and no generation, the new front is
    the cached one, measured figures included."""
    policy = load_policy(state / "tight.toml")
    cached = Front.load(state / "front" / "front.json")
    name = cached.points[0].subnet
    cached = cached.with_measurement(name, accuracy=0.5, latency_ms={1: 0.2}, model_bytes=123)
    predictor = AccuracyPredictor.load(state / "predictor" / "predictor.npz")
    settings = SearchSettings(evaluations=len(cached), population=len(cached), seed=3)
    found = search_front(predictor, structured_profile(), policy, settings=settings, cached=cached)
    assert found.warm_started == len(cached) and found.measurements_kept == 1
    assert {p.subnet for p in found.front.points} == {p.subnet for p in cached.points}
    kept = found.front[name]
    assert (kept.measured_accuracy, kept.measured_latency_ms, kept.measured_model_bytes) == (0.5, ((1, 0.2),), 123)
    assert kept.accuracy == pytest.approx(cached[name].accuracy)


def test_a_bad_policy_is_rejected_with_the_policy_loaders_text(state: Path) -> None:
    bad = state / "bad.toml"
    bad.write_text('format_version = 1\n[budgets]\nlatncy_ms = 3\n[objective]\nkind = "fastest"\n')
    with pytest.raises(PolicyValidationError) as caught:
        load_policy(bad)
    for command in ("search", "front"):
        out = _invoke(command, "--state-dir", state, "--policy", bad)
        assert out.exit_code == 2, out.output
        assert f"error: {caught.value}" in out.output and "Traceback" not in out.output
        assert "did you mean 'latency_ms_p95'" in out.output
    preset = _invoke("search", "--state-dir", state, "--policy", "balancd")
    assert preset.exit_code == 2 and "unknown policy preset 'balancd' (did you mean 'balanced'?)" in preset.output
    assert not (state / "bad-front.json").exists()


def test_missing_or_corrupt_inputs_name_the_file_and_the_command_that_makes_it(tmp_path: Path, state: Path) -> None:
    policy = ("--policy", state / "tight.toml")
    profile = ("--profile", state / "profile" / "device.json")
    missing = _invoke("search", "--state-dir", tmp_path, *policy, *profile)
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    want = f"error: no accuracy predictor at {tmp_path / 'predictor' / 'predictor.npz'}: build one with `lifelong predictor build`"
    assert want in missing.output
    predictor = ("--predictor", state / "predictor" / "predictor.npz")
    no_profile = _invoke("search", "--state-dir", tmp_path, *policy, *predictor)
    assert no_profile.exit_code == 2
    assert f"no device profile at {tmp_path / 'profile' / 'device.json'}: run `lifelong profile`" in no_profile.output
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    corrupt = _invoke("search", "--state-dir", tmp_path, *policy, *profile, "--predictor", tmp_path / "junk.npz")
    assert corrupt.exit_code == 2
    assert f"{tmp_path / 'junk.npz'} is not a readable accuracy predictor" in corrupt.output
    assert "build it again with `lifelong predictor build`" in corrupt.output
    (tmp_path / "junk.json").write_text("{not json")
    bad_profile = _invoke("search", "--state-dir", tmp_path, *policy, *predictor, "--profile", tmp_path / "junk.json")
    assert bad_profile.exit_code == 2
    assert f"{tmp_path / 'junk.json'} is not a readable device profile" in bad_profile.output
    (tmp_path / "batch4.toml").write_text('format_version = 1\nname = "b4"\n[target]\nbatch = 4\n')
    batch = _invoke("search", "--state-dir", tmp_path, *predictor, *profile, "--policy", tmp_path / "batch4.toml")
    assert batch.exit_code == 2
    assert "policy 'b4' optimises latency at batch 4 (target.batch), but the device profile" in batch.output
    assert "measured batches [1, 32]" in batch.output
    assert not (tmp_path / "front").exists(), "a failed search wrote a front"


# -- lifelong front ------------------------------------------------------------------------------
def test_front_table_marks_what_each_policy_chooses(state: Path, searched: dict[str, object]) -> None:
    front = Front.load(state / "front" / "front.json")
    for name in ("tight", "tighter"):
        policy = load_policy(state / f"{name}.toml")
        out = _invoke("front", "--state-dir", state, "--policy", state / f"{name}.toml")
        assert out.exit_code == 0, out.output
        rows = [line for line in out.output.splitlines() if line.endswith(tuple(p.subnet for p in front.points))]
        assert len(rows) == len(front)
        starred = [line.split()[-1] for line in rows if line.startswith("*")]
        assert starred == [choose(front, policy).subnet], name
        assert f"(* = chosen by policy {name!r}" in out.output
    tight = choose(front, load_policy(state / "tight.toml"))
    tighter = choose(front, load_policy(state / "tighter.toml"))
    assert tighter.latency_at(1) <= 0.09 < tight.latency_at(1), "the test wants two policies choosing apart"
    doc = json.loads(_invoke("front", "--state-dir", state, "--policy", "low-latency", "--json").stdout)
    low = choose(front, load_preset("low-latency"))
    assert doc["chosen"] == (low.subnet if low else None) and doc["info"] == front.info
    assert [p["subnet"] for p in doc["points"]] == [p.subnet for p in front.sorted(1).points]
    assert sum(p["chosen"] for p in doc["points"]) == (low is not None)
    assert all(p["models"] == [] and not p["serving"] for p in doc["points"]), "a state without a store"
    assert {
        k: v for k, v in doc["points"][0].items() if k not in ("chosen", "latency_at_batch", "models", "serving")
    } == (front.sorted(1).points[0].to_dict())


def test_front_plot_with_baselines_and_the_errors(state: Path, tmp_path: Path, searched: dict[str, object]) -> None:
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps([{"name": "small CNN", "accuracy": 0.9, "latency_ms": 0.15}]))
    png = tmp_path / "front.png"
    out = _invoke("front", "--state-dir", state, "--png", png, "--baselines", baselines)
    assert out.exit_code == 0, out.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot -> {png}" in out.output
    baselines.write_text(json.dumps([{"name": "cnn", "accuracy": 90, "latency_ms": 0.15}]))
    bad = _invoke("front", "--state-dir", state, "--png", png, "--baselines", baselines)
    assert bad.exit_code == 2 and f"error: {baselines}: baseline 0: expected a list of" in bad.output
    alone = _invoke("front", "--state-dir", state, "--baselines", baselines)
    assert alone.exit_code == 2 and "give --png too" in alone.output
    none = _invoke("front", "--state-dir", tmp_path)
    assert none.exit_code == 2
    assert f"error: no front cached at {tmp_path / 'front' / 'front.json'}: run `lifelong search` first" in none.output


@pytest.mark.slow
def test_the_search_command_runs_without_torch(state: Path, tmp_path: Path) -> None:
    """The service searches in its own process, which must never import torch (measured picks included)."""
    code = (
        "import sys; from service.cli.main import cli; "
        f"cli.main(['search', '--state-dir', {str(state)!r}, '--out', {str(tmp_path / 'f.json')!r}, "
        "'--budget', '100', '--population', '20', '--measure', '4'], standalone_mode=False); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("False") and (tmp_path / "f.json").exists()


# -- comparison of the algorithms ------------------------------------------------------------------
def test_compare_algorithms_at_equal_evaluations_with_a_fixed_reference() -> None:
    evaluator = landscape()
    ref = reference_point(SPACE, evaluator)
    assert ref == reference_point(SPACE, evaluator), "the reference must not move"
    c = compare_algorithms(SPACE, evaluator, evaluations=300, seeds=(0, 1), population=20)
    assert c.reference == ref and c.seeds == (0, 1) and list(c.scores) == list(ALGORITHMS)
    for name, s in c.scores.items():
        assert s.evaluations == (300, 300), name
        assert len(s.hypervolumes) == 2 and all(h > 0 for h in s.hypervolumes), name
        assert s.mean == pytest.approx(np.mean(s.hypervolumes)) and s.std == pytest.approx(
            np.std(s.hypervolumes, ddof=1)
        )
    doc = c.to_dict()
    assert doc["reference"] == {"accuracy": ref[0], "latency_ms": ref[1]}
    assert doc["algorithms"]["nsga2"]["hypervolumes"] == list(c.scores["nsga2"].hypervolumes)
    with pytest.raises(ValueError, match="unknown algorithms \\['hill_climbing'\\]"):
        compare_algorithms(SPACE, evaluator, algorithms=("nsga2", "hill_climbing"))


def test_search_algos_benchmark_writes_its_results(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run in this process (a subprocess would pay for Python, numpy and torch, which the
    benchmark's machine description imports, all over again)."""
    spec = importlib.util.spec_from_file_location("search_algos_benchmark", ROOT / "benchmarks" / "search_algos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "search_algos.json"
    argv = [
        "--state-dir", str(state), "--evaluations", "200", "--seeds", "2", "--population", "20",
        "--throughput-subnets", "300", "--out", str(out),
    ]  # fmt: skip
    assert module.main(argv) == out
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "search_algos" and doc["machine"]["cores"] >= 1
    assert doc["inputs"]["predictor_sha256"] == file_sha256(state / "predictor" / "predictor.npz")
    assert doc["inputs"]["profile_fingerprint"] == DeviceProfile.load(state / "profile" / "device.json").fingerprint
    algos = doc["comparison"]["algorithms"]
    assert set(algos) == set(ALGORITHMS) and all(len(a["hypervolumes"]) == 2 for a in algos.values())
    names = [t["name"] for t in doc["targets"]]
    assert names[0].startswith("nsga2 hypervolume >= random search's") and len(names) == 3
    ratio = algos["nsga2"]["hypervolume_mean"] / algos["random_search"]["hypervolume_mean"]
    assert doc["targets"][0]["value"] == pytest.approx(ratio)
    assert doc["targets"][0]["met"] == (ratio >= 1)
    assert "| target | value | goal | met |" in capsys.readouterr().out


@pytest.mark.slow
def test_measured_picks_time_the_candidates_and_the_front_table_says_so(state: Path, tmp_path: Path) -> None:
    out = tmp_path / "front.json"
    result = _invoke(
        "search", "--state-dir", state, "--policy", "balanced", "--budget", 300, "--population", 30,
        "--measure", 6, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "measured picks: timed 6 candidates in" in result.output, result.output
    saved = Front.load(out)
    assert saved.info["measured_pick"]["timed"] == 6
    assert saved.points and all(p.latency_source == "graph" for p in saved.points)
    shown = _invoke("front", "--state-dir", state, "--policy", "balanced", "--front", out)
    assert shown.exit_code == 0, shown.output
    rows = [line for line in shown.output.splitlines() if line.rstrip().endswith(tuple(p.subnet for p in saved.points))]
    assert len(rows) == len(saved) and all("g " in r for r in rows), shown.output
    assert "g = of its graph timed here" in shown.output
