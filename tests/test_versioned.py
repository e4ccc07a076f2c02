"""lifelong.persist.versioned: versioned JSON files read with checks and written atomically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lifelong.device.profile import PROFILE_FORMAT, DeviceProfile, ProfileError
from lifelong.errors import CheckpointError, DataError, FormatVersionError, LifelongError
from lifelong.jobs.adapt_request import ADAPT_REQUEST_FORMAT, AdaptRequest
from lifelong.persist.supernet_versions import POINTER_FORMAT, current_supernet
from lifelong.persist.versioned import read_versioned_json, write_json_atomic
from lifelong.predictor.samples import PREDICTOR_DATA_FORMAT, PredictorData
from lifelong.search.front import FRONT_FORMAT, Front

DOC = {"kind": "lifelong-thing", "format_version": 3, "values": [1, 2.5, None], "name": "é"}


def read(path: Path, **kw: Any) -> dict[str, Any] | None:
    args: dict[str, Any] = {"kind": "lifelong-thing", "version": 3, "what": "thing", **kw}
    return read_versioned_json(path, **args)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# -- reading --------------------------------------------------------------------------------------


def test_round_trip_writes_what_json_dumps_writes(tmp_path: Path) -> None:
    for durable in (True, False):
        for kwargs in ({}, {"indent": 1}, {"indent": 1, "sort_keys": True}):
            path = write_json_atomic(tmp_path / "a" / "b" / "thing.json", DOC, durable=durable, **kwargs)
            assert path == tmp_path / "a" / "b" / "thing.json"
            assert path.read_text(encoding="utf-8") == json.dumps(DOC, **kwargs)
            assert read(path) == DOC
    assert write_json_atomic(str(tmp_path / "s.json"), {"x": 1}) == tmp_path / "s.json"
    assert json.loads(write_json_atomic(tmp_path / "f.json", {"x": 1.5j.imag}, default=float).read_text()) == {"x": 1.5}


def test_a_missing_file_names_the_file_and_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    with pytest.raises(DataError, match=r"^no thing at .*nowhere\.json: make one$") as info:
        read(missing, missing_hint="make one")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(DataError, match=r"nowhere\.json is not a readable thing \(FileNotFoundError: "):
        read(missing)
    assert read(missing, missing_ok=True) is None


@pytest.mark.parametrize(
    ("content", "cause"),
    [(b"{", "JSONDecodeError"), (b"", "JSONDecodeError"), (b'{"kind": "\xff"}', "UnicodeDecodeError")],
)
def test_a_corrupt_file_is_not_readable(tmp_path: Path, content: bytes, cause: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=rf"^{bad} is not a readable thing \({cause}: .*\)$"):
        read(bad)
    with pytest.raises(DataError, match=r"\); delete it$"):
        read(bad, unreadable_hint="delete it", missing_ok=True)  # missing_ok is for missing files only


def test_a_folder_is_not_readable(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"is not readable thing data \(IsADirectoryError"):
        read(tmp_path, what="thing data", article="", error=CheckpointError)


@pytest.mark.parametrize(
    ("doc", "found"),
    [
        ({"kind": "lifelong-other", "format_version": 3}, "kind 'lifelong-other'"),
        ({"format_version": 3}, "no kind"),
        ([DOC], "a JSON array"),
        ("lifelong-thing", "a JSON string"),
        (3, "a JSON number"),
        (None, "a JSON null"),
    ],
)
def test_another_kind_of_file_or_json_that_is_no_object_is_refused(tmp_path: Path, doc: object, found: str) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps(doc))
    expected = f"{path} is not a lifelong thing (expected kind 'lifelong-thing', found {found})"
    with pytest.raises(DataError) as info:
        read(path)
    assert str(info.value) == expected
    with pytest.raises(CheckpointError, match="is not lifelong thing data"):
        read(path, what="thing data", article="", error=CheckpointError)


@pytest.mark.parametrize("found", [2, 4, None, "3"])
def test_another_format_version_says_what_to_do(tmp_path: Path, found: object) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**DOC, "format_version": found}))
    with pytest.raises(FormatVersionError) as info:
        read(path, redo_hint="Make it again.", error=CheckpointError)
    assert (info.value.what, info.value.found, info.value.supported) == (f"thing {path}", found, 3)
    assert str(info.value) == (
        f"thing {path} has format version {found!r}; this version of lifelong reads version 3. Make it again."
    )


def test_the_error_class_is_the_callers(tmp_path: Path) -> None:
    class ThingError(LifelongError, ValueError):
        pass

    (tmp_path / "bad.json").write_text("[")
    for path in (tmp_path / "missing.json", tmp_path / "bad.json"):
        with pytest.raises(ThingError):
            read(path, missing_hint="make one", error=ThingError)


# -- writing --------------------------------------------------------------------------------------


def test_an_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    for durable in (True, False):
        write_json_atomic(tmp_path / "thing.json", DOC, durable=durable)
        write_json_atomic(tmp_path / "thing.json", {**DOC, "name": "second"}, durable=durable)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing.json"]
    assert read(tmp_path / "thing.json")["name"] == "second"  # type: ignore[index]


@pytest.mark.parametrize("fail_in", ["fsync", "replace"])
def test_a_write_that_fails_midway_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_in: str
) -> None:
    path = write_json_atomic(tmp_path / "thing.json", DOC)
    before = path.read_bytes()

    def broken(*args: object) -> None:
        assert leftovers(tmp_path), "the new content was not written to a temporary file first"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, fail_in, broken)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(path, {**DOC, "name": "new"})
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_an_object_json_cannot_hold_fails_before_anything_is_written(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "thing.json", DOC)
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic(path, {**DOC, "values": {1, 2}})
    assert read(path) == DOC and leftovers(tmp_path) == []


def test_a_process_killed_before_the_rename_leaves_the_old_file(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "thing.json", DOC)
    script = (
        "import os, sys\n"
        "from lifelong.persist.versioned import write_json_atomic\n"
        "os.replace = lambda *a: os._exit(9)  # killed between writing and renaming\n"
        "write_json_atomic(sys.argv[1], {'kind': 'lifelong-thing', 'format_version': 3, 'name': 'half'})\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, timeout=60)
    assert done.returncode == 9, done.stderr.decode()
    assert read(path) == DOC
    stale = leftovers(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(".thing.json.tmp-"), stale
    assert json.loads((tmp_path / stale[0]).read_text())["name"] == "half"  # the new file was whole, not renamed


def test_durable_writes_sync_the_file_and_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[bool] = []  # per fsync: was it a folder?
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_json_atomic(tmp_path / "thing.json", DOC, durable=False)
    assert synced == []
    write_json_atomic(tmp_path / "thing.json", DOC)
    assert synced == [False, True]  # the file before the rename, the folder after it


def test_threads_writing_one_file_do_not_share_a_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "thing.json"
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(40):
                write_json_atomic(path, {**DOC, "name": f"{n}-{i}", "values": [n] * 2000}, durable=False)
        except Exception as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    d = read(path)
    assert d is not None and d["values"] == [int(d["name"].split("-")[0])] * 2000
    assert leftovers(tmp_path) == []


# -- the callers keep their errors ----------------------------------------------------------------


def _pointer(folder: Path) -> Path:
    return current_supernet(folder.parent)


# (loader, file name, kind, version, error, version error, missing message or None for an
# unreadable one, message of a corrupt file)
CALLERS: list[tuple[Callable[[Path], object], str, str, int, type, type, str | None, str]] = [
    (Front.load, "front.json", "lifelong-front", FRONT_FORMAT, DataError, FormatVersionError,
     "no front at .*: run a search first", "is not a readable front"),
    (PredictorData.load, "data.json", "lifelong-predictor-data", PREDICTOR_DATA_FORMAT, DataError,
     FormatVersionError, "no predictor data at .*lifelong predictor collect", "is not readable predictor data"),
    (AdaptRequest.load, "request.json", "lifelong-adapt-request", ADAPT_REQUEST_FORMAT, DataError, DataError,
     None, "is not a readable adaptation request"),
    (DeviceProfile.load, "device.json", "lifelong-device-profile", PROFILE_FORMAT, ProfileError, FormatVersionError,
     "no device profile at .*run `lifelong profile`", "is not a readable device profile .*; run `lifelong profile` again"),
    (_pointer, "current.json", "lifelong-supernet-pointer", POINTER_FORMAT, CheckpointError, FormatVersionError,
     None, "is not a readable supernet pointer .*; delete it to use supernet.pt"),
]  # fmt: skip


@pytest.mark.parametrize("caller", CALLERS, ids=[c[1] for c in CALLERS])
def test_each_file_keeps_its_errors(tmp_path: Path, caller: tuple) -> None:
    load, name, kind, version, error, version_error, missing, corrupt = caller
    path = tmp_path / name
    if name == "current.json":
        assert load(path) == tmp_path / "supernet.pt"  # no pointer: the original supernet
    elif missing is None:
        with pytest.raises(error, match=corrupt + r" \(FileNotFoundError"):
            load(path)
    else:
        with pytest.raises(error, match=missing):
            load(path)
    path.write_text('{"kind": ')
    with pytest.raises(error, match=corrupt):
        load(path)
    path.write_text(json.dumps({"kind": "lifelong-other", "format_version": version}))
    with pytest.raises(error, match=f"expected kind '{kind}', found kind 'lifelong-other'"):
        load(path)
    path.write_text(json.dumps({"kind": kind, "format_version": version + 1}))
    with pytest.raises(version_error, match=f"{version + 1}.*{version}"):
        load(path)


def test_an_adaptation_result_is_read_back_by_its_mode_with_its_kind_and_version(tmp_path: Path) -> None:
    from lifelong.jobs.adapt_request import BN_RESULT_FORMAT, BN_RESULT_KIND, read_adapt_result

    path = tmp_path / "result.json"
    path.write_text(json.dumps({"kind": BN_RESULT_KIND, "format_version": BN_RESULT_FORMAT, "mode": "bn"}))
    assert read_adapt_result(path, "bn")["mode"] == "bn"
    with pytest.raises(DataError, match="lifelong-adapt-result"):  # a label-free result where a labelled one was run
        read_adapt_result(path, "finetune")
    path.write_text(json.dumps({"kind": BN_RESULT_KIND, "format_version": BN_RESULT_FORMAT + 1}))
    with pytest.raises(FormatVersionError):
        read_adapt_result(path, "bn")
