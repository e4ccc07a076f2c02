from __future__ import annotations

import ast
import dataclasses
import pickle
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import policies
from policies import (
    Budgets,
    ClassWeights,
    DriftSettings,
    Objective,
    Policy,
    PolicyError,
    PolicyFileError,
    PolicyValidationError,
    Problem,
    Target,
    load_policy,
    load_preset,
    parse_policy,
    policy_to_dict,
    policy_to_toml,
    preset_names,
)
from policies._toml import dumps

PACKAGE_DIR = Path(policies.__file__).parent
PRESETS = ["accuracy-first", "balanced", "battery-saver", "low-latency"]


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- presets -------------------------------------------------------------------------------


def test_the_four_presets_are_shipped() -> None:
    assert preset_names() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_round_trips_through_toml(name: str) -> None:
    policy = load_preset(name)
    assert policy.name == name
    text = policy_to_toml(policy)
    assert parse_policy(tomllib.loads(text)) == policy
    assert policy_to_dict(parse_policy(policy_to_dict(policy))) == policy_to_dict(policy)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_file_explains_when_to_use_it(name: str) -> None:
    text = (PACKAGE_DIR / "presets" / f"{name}.toml").read_text()
    header = text.split("format_version")[0]
    assert header.startswith(f"# {name}:"), "the first line names the preset"
    assert "# Use it " in header and all(line.startswith("#") for line in header.strip().splitlines())


def test_presets_differ_in_the_intended_direction() -> None:
    balanced, low, battery, accurate = (
        load_preset(n) for n in ["balanced", "low-latency", "battery-saver", "accuracy-first"]
    )
    # low-latency: a tighter budget, more threads, environment drift caught sooner
    assert low.budgets.latency_ms_p95 < balanced.budgets.latency_ms_p95
    assert low.target.threads > balanced.target.threads
    assert low.drift.latency_factor < balanced.drift.latency_factor
    assert low.drift.check_interval_s < balanced.drift.check_interval_s
    assert low.swap.rollback_latency_factor < balanced.swap.rollback_latency_factor
    # battery-saver: one thread, smaller budgets, rarer checks, a lower-priority and shorter adaptation
    assert battery.target.threads == 1
    assert battery.budgets.model_bytes < balanced.budgets.model_bytes
    assert battery.budgets.peak_memory_bytes < balanced.budgets.peak_memory_bytes
    assert battery.budgets.latency_ms_p95 < balanced.budgets.latency_ms_p95
    assert battery.drift.check_interval_s > balanced.drift.check_interval_s
    assert battery.adaptation.priority > balanced.adaptation.priority
    assert battery.adaptation.finetune_steps < balanced.adaptation.finetune_steps
    assert battery.adaptation.max_seconds < balanced.adaptation.max_seconds
    # accuracy-first: the most accurate point within looser budgets, more adaptation, stricter rollback
    assert accurate.objective.kind == "max-accuracy"
    assert accurate.budgets.latency_ms_p95 > balanced.budgets.latency_ms_p95
    assert accurate.budgets.model_bytes > balanced.budgets.model_bytes
    assert accurate.adaptation.finetune_steps > balanced.adaptation.finetune_steps
    assert accurate.adaptation.answer_seconds > balanced.adaptation.answer_seconds
    assert accurate.drift.accuracy_drop < balanced.drift.accuracy_drop
    assert accurate.swap.rollback_accuracy_drop < balanced.swap.rollback_accuracy_drop
    assert len({balanced, low, battery, accurate}) == 4


def test_labelled_answer_box_is_what_remains_of_the_answer_deadline() -> None:
    a = load_preset("balanced").adaptation  # answer within 110 s, max_seconds 300
    assert a.labelled_box(12.0) == pytest.approx(98.0)  # labels in 12 s after the detection
    assert a.labelled_box(100.0) == a.MIN_BOX_S  # a slow trickle still leaves time to fine-tune
    assert a.labelled_box(-5.0) == pytest.approx(110.0)  # a clock step back does not lengthen it
    slow = dataclasses.replace(a, answer_seconds=1000.0)
    assert slow.labelled_box(0.0) == slow.max_seconds  # never past the worker's limit


def test_unknown_preset_lists_the_presets_with_did_you_mean() -> None:
    with pytest.raises(PolicyError, match=r"did you mean 'balanced'\?.*accuracy-first, balanced, battery-saver"):
        load_preset("balaced")


# --- loading files -------------------------------------------------------------------------


def test_a_minimal_file_takes_the_defaults(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "format_version = 1\n[budgets]\nlatency_ms_p95 = 4\n"))
    assert policy == Policy(budgets=Budgets(latency_ms_p95=4.0))
    assert isinstance(policy.budgets.latency_ms_p95, float)
    assert policy.budgets.model_bytes is None and policy.target == Target()


def test_a_file_with_many_mistakes_reports_every_one(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
format_version = 2
name = "lab"

[target]
threads = true

[budgets]
latency_ms_p95 = -3
latncy_ms = 4

[drift]
window = 500

[wishes]
pony = true
""",
    )
    with pytest.raises(PolicyValidationError) as caught:
        load_policy(path)
    message = str(caught.value)
    lines = message.splitlines()
    assert "5 problems" in lines[0] and str(path) in lines[0]
    assert len(lines) == 6, message
    assert all(line.strip().startswith(f"{path}: ") for line in lines[1:])
    assert "format_version: expected 1" in message and "found 2" in message and "upgrade lifelong" in message
    assert (
        "target.threads: expected a positive integer, or 0 to leave the count to each model, found true (a boolean)"
        in message
    )
    assert "budgets.latency_ms_p95: expected a positive number, found -3" in message
    assert "budgets.latncy_ms: unknown key (did you mean 'latency_ms_p95'?)" in message
    assert "wishes: unknown section" in message
    keys = [p.key for p in caught.value.problems]
    assert keys == ["format_version", "target.threads", "budgets.latency_ms_p95", "budgets.latncy_ms", "wishes"]


def test_a_missing_format_version_says_what_to_add(tmp_path: Path) -> None:
    with pytest.raises(
        PolicyValidationError, match=r"format_version: expected format_version = 1.*add `format_version = 1`"
    ):
        load_policy(write(tmp_path, 'name = "x"\n'))


@pytest.mark.parametrize(
    ("text", "key", "found", "suggestion"),
    [
        ("[target]\nruntime = 'ort_cpu'", "target.runtime", '"ort_cpu"', "ort-cpu"),
        ("[target]\nbatch = 2.0", "target.batch", "2.0", None),
        ("[budgets]\nthreads = 2", "budgets.threads", "unknown key", "target.threads"),
        ("threads = 2", "threads", "unknown key", "target.threads"),
        ("[budget]\nmodel_bytes = 1", "budget", "unknown section", "budgets"),
        ("target = 3", "target", "3", None),
        ("[[target]]\nthreads = 1", "target", "an array of tables", None),
        ("[drift]\naccuracy_drop = 1", "drift.accuracy_drop", "1", None),
        ("[drift]\nlatency_factor = nan", "drift.latency_factor", "nan", None),
        ("[drift]\nwindow = 600\nreference_window = 550", "drift.reference_window", "550", None),
        ("[adaptation]\npriority = 20", "adaptation.priority", "20", None),
        ("[swap]\ncanary_window = 0", "swap.canary_window", "0", None),
        ("[retention]\nkeep_models = 1", "retention.keep_models", "1", None),
        ("[objective]\nkind = 'utility'\naccuracy_weight = 0", "objective", "all three weights 0", None),
        ("[objective]\nkind = 'utilty'", "objective.kind", '"utilty"', "utility"),
        ("[class_weights]\ncat = 2.0", "class_weights.cat", "the key 'cat'", None),
        ('[class_weights]\n"3" = -1', "class_weights.3", "-1", None),
        ('[class_weights]\n"3" = 1.0\n"03" = 2.0', "class_weights.3", "a second weight for class 3", None),
        ("name = ''", "name", '""', None),
    ],
)
def test_each_kind_of_mistake_is_one_problem(text: str, key: str, found: str, suggestion: str | None) -> None:
    with pytest.raises(PolicyValidationError) as caught:
        parse_policy(tomllib.loads("format_version = 1\n" + text), source="p.toml")
    (problem,) = caught.value.problems
    assert (problem.file, problem.key, problem.found, problem.suggestion) == ("p.toml", key, found, suggestion)


def test_class_weights_from_toml(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, 'format_version = 1\n[class_weights]\n"6" = 2\n0 = 0.5\n'))
    assert policy.class_weights == ClassWeights({0: 0.5, 6: 2.0})
    assert policy.class_weights.weights == ((0, 0.5), (6, 2.0))
    assert policy.class_weights.for_classes(7) == (0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0)
    with pytest.raises(PolicyValidationError, match="class_weights.6: expected a class index from 0 to 4"):
        policy.class_weights.for_classes(5)
    assert parse_policy(tomllib.loads(policy_to_toml(policy))) == policy
    # a document built in Python rather than read from TOML may use int keys
    assert parse_policy({"format_version": 1, "class_weights": {6: 2, 0: 0.5}}) == policy
    with pytest.raises(PolicyValidationError, match=r"class_weights: expected \(class index, weight\) pairs"):
        ClassWeights(5)  # type: ignore[arg-type]


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "format_version = 1\n\n[target]\nthreads = = 2\n", name="broken.toml")
    with pytest.raises(PolicyFileError, match=r"broken\.toml: not valid TOML: .*line 4") as caught:
        load_policy(path)
    assert (caught.value.path, caught.value.line) == (str(path), 4)


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "nowhere.toml"
    with pytest.raises(PolicyFileError, match="nowhere.toml: policy file not found") as caught:
        load_policy(path)
    assert str(path) in str(caught.value)


def test_a_binary_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PolicyFileError, match="not UTF-8"):
        load_policy(path)


# --- the dataclasses -----------------------------------------------------------------------


def test_dataclasses_validate_themselves_and_report_every_problem() -> None:
    with pytest.raises(PolicyValidationError) as caught:
        Target(threads=-1, batch=True)
    assert [p.key for p in caught.value.problems] == ["target.threads", "target.batch"]
    with pytest.raises(PolicyValidationError, match="drift.window"):
        DriftSettings(window=10)
    with pytest.raises(PolicyValidationError, match="format_version"):
        Policy(format_version=2)
    with pytest.raises(PolicyValidationError, match="budgets: expected a Budgets"):
        Policy(budgets={"latency_ms_p95": 3})
    with pytest.raises(PolicyValidationError, match="objective.latency_weight"):
        dataclasses.replace(load_preset("balanced"), objective=Objective(latency_weight=-1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        Target().threads = 3  # type: ignore[misc]


def test_errors_are_value_errors_and_survive_pickling() -> None:
    assert issubclass(PolicyError, ValueError)
    assert issubclass(PolicyValidationError, PolicyError) and issubclass(PolicyFileError, PolicyError)
    error = PolicyValidationError([Problem("a.toml", "budgets.model_bytes", "a positive integer", "0")])
    again = pickle.loads(pickle.dumps(error))
    assert again.problems == error.problems and str(again) == str(error)
    file_error = pickle.loads(pickle.dumps(PolicyFileError("a.toml", "not valid TOML", 3, 1)))
    assert (file_error.path, file_error.line, str(file_error)) == ("a.toml", 3, "a.toml: not valid TOML")


def test_toml_writer_round_trips_awkward_strings() -> None:
    document = {"name": 'Lab "B" \\ café', "s": {"text": "a\nb\t\x7f\x01", "key with space": 1.5e-07, "big": 10**18}}
    assert tomllib.loads(dumps(document)) == document
    policy = Policy(name='Lab "B" \\ café')
    assert parse_policy(tomllib.loads(policy_to_toml(policy))) == policy


# --- the package ---------------------------------------------------------------------------


def test_all_is_sorted_and_complete() -> None:
    assert sorted(policies.__all__) == policies.__all__, "keep __all__ sorted"
    for name in policies.__all__:
        assert getattr(policies, name) is not None
    modules = [policies.errors, policies.schema, policies.class_weights, policies.loader, policies.presets]
    defined = {
        name
        for module in modules
        for name, obj in vars(module).items()
        if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__
    }
    assert defined <= set(policies.__all__), defined - set(policies.__all__)


def test_policies_imports_only_the_standard_library() -> None:
    for path in PACKAGE_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                assert root == "policies" or root in sys.stdlib_module_names, f"{path} imports {root}"
                assert root not in {"lifelong", "service"}, f"{path} imports {root}"
    code = "import sys, policies; policies.load_preset('balanced'); print(sorted({m.split('.')[0] for m in sys.modules} & {'lifelong', 'service', 'numpy'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_service_refuses_a_linked_foreign_or_world_writable_policy_file_and_quotes_none_of_it(tmp_path) -> None:
    import os

    from service.state.policy_state import PolicyState

    secret = tmp_path / "secret.toml"
    secret.write_text('password = "hunter2"\n[budgets]\nlatency_ms_p95 = "hunter3"\n')
    link = tmp_path / "policy.toml"
    link.symlink_to(secret)
    state = PolicyState(link)
    assert state.reload() is None and state.policy.name == "balanced"
    assert "is a symbolic link" in state.error and "hunter" not in state.error
    link.unlink()
    link.write_text(secret.read_text())
    assert state.reload() is None
    assert "password" not in state.error and "hunter" not in state.error, state.error
    assert "an unknown key in the top level" in state.error and "budgets.latency_ms_p95: expected" in state.error
    link.write_text("[budgets\nlatency = 1\n")
    assert state.reload() is None and state.error.endswith("not valid TOML at line 1, column 9"), state.error
    link.write_text('format_version = 1\nname = "ok"\n')
    os.chmod(link, 0o666)
    assert state.reload() is None and "writable by every user (mode 0666)" in state.error
    os.chmod(link, 0o644)
    assert state.reload() is not None and state.error is None and state.policy.name == "ok"
    if os.geteuid() == 0:  # only root can give a file away
        os.chown(link, 12345, 12345)
        assert state.reload() is None and "owned by uid 12345; expected root or the service's user" in state.error
