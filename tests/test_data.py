from __future__ import annotations

import gzip
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lifelong.data.datasets as data_module
from lifelong.data.datasets import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    ArrayDataset,
    fashion_mnist_dir,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    load_npz,
    read_idx,
)
from lifelong.errors import DataError


def _write_idx(path: Path, arr: np.ndarray, gz: bool = True, code: int = 0x08, dtype: str = "u1") -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return raw


def _fake_fashion(root: Path, n: int = 6, gz: bool = True, split: str = "train") -> np.ndarray:
    """A tiny Fashion-MNIST folder; returns its labels."""
    root.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    x = np.arange(n * 28 * 28, dtype=np.int64).reshape(n, 28, 28) % 256
    y = np.arange(n) % 10
    _write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", x, gz)
    _write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", y, gz)
    return y


def _labelled(n_per_class: tuple[int, ...]) -> ArrayDataset:
    y = np.concatenate([np.full(k, c) for c, k in enumerate(n_per_class)])
    x = (np.arange(len(y))[:, None, None] % 256 * np.ones((1, 4, 4))).astype(np.uint8)
    return ArrayDataset(x, y, tuple(f"c{i}" for i in range(len(n_per_class))), "synthetic")


# --------------------------------------------------------------------------- real Fashion-MNIST


def test_real_fashion_mnist(fashion_train, fashion_test) -> None:
    assert fashion_train.x.shape == (60000, 28, 28) and fashion_test.x.shape == (10000, 28, 28)
    assert fashion_train.x.dtype == np.uint8 and fashion_train.y.dtype == np.int64
    assert fashion_train.y.min() == 0 and fashion_train.y.max() == 9
    assert np.bincount(fashion_test.y).tolist() == [1000] * 10
    assert fashion_test.classes == FASHION_MNIST_CLASSES and "test" in fashion_test.source
    f = fashion_test.head(3).as_float()
    assert f.shape == (3, 1, 28, 28) and f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1
    np.testing.assert_allclose(f[:, 0] * 255, fashion_test.x[:3], atol=1e-3)


def test_real_fashion_mnist_is_cached_and_read_only(fashion_test) -> None:
    again = load_fashion_mnist("test")
    assert again.x is fashion_test.x and again.y is fashion_test.y
    with pytest.raises(ValueError, match="read-only"):
        again.x[0, 0, 0] = 1


def test_split_of_real_data_is_deterministic_disjoint_and_stratified(fashion_test) -> None:
    a1, b1 = fashion_test.split(0.1, seed=3)
    a2, b2 = fashion_test.split(0.1, seed=3)
    assert np.array_equal(a1.x, a2.x) and np.array_equal(b1.y, b2.y)
    assert len(a1) + len(b1) == len(fashion_test) and len(b1) == 1000
    assert np.bincount(b1.y).tolist() == [100] * 10
    _, b3 = fashion_test.split(0.1, seed=4)
    assert not np.array_equal(b1.x, b3.x)


def test_fashion_mnist_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LIFELONG_FASHION_MNIST_DIR", raising=False)
    assert fashion_mnist_dir() == Path(DEFAULT_FASHION_MNIST_DIR)
    monkeypatch.setenv("LIFELONG_FASHION_MNIST_DIR", str(tmp_path / "fm"))
    assert fashion_mnist_dir() == tmp_path / "fm"
    with pytest.raises(DataError, match=r"fm is not a folder.*apt-get install dataset-fashion-mnist.*--data DIR"):
        load_fashion_mnist()
    _fake_fashion(tmp_path / "fm", n=3)
    assert len(load_fashion_mnist()) == 3


# --------------------------------------------------------------------------- ArrayDataset


def test_split_is_exact_disjoint_and_covering() -> None:
    ds = _labelled((7, 5, 3, 1))
    for frac in (0.0, 0.1, 0.25, 0.5, 0.9):
        train, val = ds.split(frac, seed=1)
        assert len(val) == round(len(ds) * frac) and len(train) + len(val) == len(ds)
        ids = np.concatenate([train.x[:, 0, 0], val.x[:, 0, 0]])  # each image is unique
        assert sorted(ids.tolist()) == ds.x[:, 0, 0].tolist()
        assert train.classes == ds.classes and train.y is not None
    _, val = ds.split(0.5, seed=0)
    # Half of each class, floors 3, 2, 1, 0; the two left over go to the first classes on a tie.
    assert np.bincount(val.y, minlength=4).tolist() == [4, 3, 1, 0]
    assert np.array_equal(ds.split(0.3, seed=9)[1].x, ds.split(0.3, seed=9)[1].x)


def test_split_without_labels_and_bad_fractions() -> None:
    ds = ArrayDataset(np.arange(20, dtype=np.uint8).reshape(20, 1, 1), None)
    train, val = ds.split(0.25, seed=2)
    assert len(val) == 5 and val.y is None
    assert not set(train.x.ravel()) & set(val.x.ravel())
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(DataError, match=r"val_fraction must be in \[0, 1\)"):
            ds.split(bad)


def test_array_dataset_validates() -> None:
    x = np.zeros((2, 28, 28), np.uint8)
    with pytest.raises(DataError, match="uint8"):
        ArrayDataset(np.zeros((2, 28, 28), np.float32), None)
    with pytest.raises(DataError, match=r"\(N, H, W\)"):
        ArrayDataset(np.zeros((2, 1, 28, 28), np.uint8), None)
    with pytest.raises(DataError, match=r"labels y must be 2 integers"):
        ArrayDataset(x, np.array([0, 1, 2]))
    with pytest.raises(DataError, match=r"labels y must be 2 integers"):
        ArrayDataset(x, np.array([0.0, 1.0]))
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.1 .*found 0\.\.2"):
        ArrayDataset(x, np.array([0, 2]), ("a", "b"))
    ds = ArrayDataset(x, np.array([0, 1], np.uint8), ("a", "b"), "src")
    assert ds.y.dtype == np.int64 and "2 x 28x28" in repr(ds)


def test_array_dataset_subset_head_concat_and_as_float() -> None:
    x = np.array([[[0]], [[51]], [[255]]], np.uint8)
    a = ArrayDataset(x, np.array([0, 1, 0]), ("a", "b"), source="a")
    assert a.subset([2, 0]).x.ravel().tolist() == [255, 0] and a.subset([2, 0]).y.tolist() == [0, 0]
    assert len(a.head(2)) == 2 and len(a.head(10)) == 3
    f = a.as_float()
    assert f.shape == (3, 1, 1, 1) and f.dtype == np.float32
    np.testing.assert_allclose(f.ravel(), [0.0, 0.2, 1.0])
    b = a.concat(a)
    assert len(b) == 6 and b.y.tolist() == [0, 1, 0, 0, 1, 0] and b.source == "a+a"
    with pytest.raises(DataError, match="labelled and unlabelled"):
        a.concat(ArrayDataset(x, None))
    with pytest.raises(DataError, match=r"images of \(1, 1\) and \(2, 2\)"):
        a.concat(ArrayDataset(np.zeros((1, 2, 2), np.uint8), np.array([0])))
    with pytest.raises(DataError, match="classes"):
        a.concat(ArrayDataset(x, np.array([0, 1, 0]), ("x", "y")))


# --------------------------------------------------------------------------- IDX


def test_read_idx_gz_raw_and_wide_types(tmp_path: Path) -> None:
    arr = np.arange(24).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    _write_idx(tmp_path / "a.idx", arr, gz=False)
    _write_idx(tmp_path / "i.idx", arr - 5, gz=False, code=0x0C, dtype=">i4")
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr) and read_idx(tmp_path / "a.gz").dtype == np.uint8
    assert np.array_equal(read_idx(tmp_path / "a.idx"), arr)
    wide = read_idx(tmp_path / "i.idx")
    assert wide.dtype == np.int32 and np.array_equal(wide, arr - 5)


def test_idx_errors_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "train-images-idx3-ubyte.gz"
    raw = _write_idx(good, np.zeros((4, 28, 28)))
    assert read_idx(good).shape == (4, 28, 28)
    trunc = tmp_path / "t.idx"
    trunc.write_bytes(raw[:-10])
    expected = r"t\.idx: truncated.*declares shape \(4, 28, 28\).*3152 bytes.*holds 3142 bytes"
    with pytest.raises(DataError, match=expected):
        read_idx(trunc)
    (tmp_path / "long.idx").write_bytes(raw + b"xx")
    with pytest.raises(DataError, match=r"long\.idx: has trailing data"):
        read_idx(tmp_path / "long.idx")
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x03\x04" + raw[4:])
    with pytest.raises(DataError, match=r"bad\.idx: not an IDX file \(magic number 0x01020304; expected 0x0000"):
        read_idx(bad)
    corrupt = tmp_path / "c.gz"
    corrupt.write_bytes(good.read_bytes()[:30])
    with pytest.raises(DataError, match=r"c\.gz: corrupt or truncated gzip"):
        read_idx(corrupt)
    (tmp_path / "g.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(DataError, match=r"g\.gz: corrupt or truncated gzip"):
        read_idx(tmp_path / "g.gz")
    (tmp_path / "plain.gz").write_bytes(raw)  # named .gz but not gzip data
    with pytest.raises(DataError, match=r"plain\.gz: corrupt or truncated gzip"):
        read_idx(tmp_path / "plain.gz")
    with pytest.raises(DataError, match=r"nope\.idx: no such IDX file"):
        read_idx(tmp_path / "nope.idx")


def test_fashion_mnist_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere is not a folder.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path / "nowhere")
    with pytest.raises(DataError, match="missing train-images-idx3-ubyte.gz"):
        load_fashion_mnist("train", tmp_path)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((5, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros((4,)))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: 5 train images but labels of shape \(4,\)"):
        load_fashion_mnist("train", tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 10]))
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9, found 0\.\.10"):
        load_fashion_mnist("train", tmp_path)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((5, 28, 27)))
    with pytest.raises(DataError, match=r"should be uint8 \(N, 28, 28\)"):
        load_fashion_mnist("train", tmp_path)
    with pytest.raises(DataError, match="split must be"):
        load_fashion_mnist("valid", tmp_path)


def test_fashion_mnist_raw_files_and_cache_invalidation(tmp_path: Path) -> None:
    y = _fake_fashion(tmp_path, n=4, gz=False, split="test")
    ds = load_fashion_mnist("test", tmp_path)
    assert ds.y.tolist() == y.tolist() and ds.x.shape == (4, 28, 28) and ds.classes == FASHION_MNIST_CLASSES
    assert load_fashion_mnist("test", tmp_path).x is ds.x
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    _write_idx(labels, np.array([9, 8, 7, 6]), gz=False)
    st = labels.stat()
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_fashion_mnist("test", tmp_path).y.tolist() == [9, 8, 7, 6]
    assert len(data_module._CACHE) <= data_module._CACHE_MAX


# --------------------------------------------------------------------------- image folders


def test_image_folder(tmp_path: Path) -> None:
    for cls, n in (("boot", 2), ("shirt", 3)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            size = 28 if i == 0 else 40
            mode = "RGB" if i == 1 else "L"
            color = (200, 10, 10) if mode == "RGB" else 128
            Image.new(mode, (size, size), color=color).save(tmp_path / cls / f"{i}.PNG")
    Image.new("L", (10, 20), color=30).save(tmp_path / "shirt" / "z.jpeg")
    (tmp_path / "shirt" / "notes.txt").write_text("ignored")
    ds = load_image_folder(tmp_path)
    assert ds.x.shape == (6, 28, 28) and ds.classes == ("boot", "shirt") and ds.y.tolist() == [0, 0, 1, 1, 1, 1]
    assert ds.x[0].max() == ds.x[0].min() == 128  # 28x28 kept as is
    expected_gray = round(0.299 * 200 + 0.587 * 10 + 0.114 * 10)
    assert abs(int(ds.x[1].mean()) - expected_gray) <= 1  # the RGB one, resized
    assert abs(int(ds.x[5].mean()) - 30) <= 3  # the JPEG, resized from 10x20
    assert load_dataset(tmp_path).classes == ("boot", "shirt")
    assert load_image_folder(tmp_path, image_size=8).x.shape == (6, 8, 8)
    swapped = load_image_folder(tmp_path, classes=("shirt", "boot", "bag"))
    assert swapped.classes == ("shirt", "boot", "bag") and swapped.y.tolist() == [0, 0, 0, 0, 1, 1]


def test_image_folder_transparency_becomes_black(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    img = Image.new("RGBA", (28, 28), (255, 255, 255, 0))
    img.putpixel((3, 4), (255, 255, 255, 255))
    img.save(tmp_path / "a" / "t.png")
    x = load_image_folder(tmp_path).x[0]
    assert x[4, 3] == 255 and x.sum() == 255


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    Image.new("L", (28, 28)).save(tmp_path / "boot" / "ok.png")
    (tmp_path / "boot" / "broken.png").write_bytes(b"\x89PNG not really")
    good = tmp_path / "boot" / "ok.png"
    (tmp_path / "boot" / "cut.png").write_bytes(good.read_bytes()[:40])
    with pytest.raises(DataError, match=r"2 of 3 images.*broken\.png: unreadable image.*cut\.png: unreadable image"):
        load_image_folder(tmp_path)
    with pytest.raises(DataError, match=r"sub-folders \['boot'\] are not among the classes \['shirt'\]"):
        load_image_folder(tmp_path, classes=["shirt"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty: no class sub-folders"):
        load_image_folder(empty)
    (empty / "a").mkdir()
    (empty / "a" / "readme.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"no PNG/JPEG images .* in the class folders \['a'\]"):
        load_image_folder(empty)
    with pytest.raises(DataError, match="not a folder"):
        load_image_folder(tmp_path / "missing")


# --------------------------------------------------------------------------- npz


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"x": np.zeros((3, 28, 27), np.uint8)}, r"'x' must be \(N, 28, 28\) .*found shape \(3, 28, 27\)"),
        ({"x": np.zeros((3, 3, 28, 28), np.uint8)}, r"found shape \(3, 3, 28, 28\)"),
        ({"x": np.zeros((28, 28), np.uint8)}, r"found shape \(28, 28\)"),
        ({"x": np.full((2, 28, 28), np.nan, np.float32)}, "'x' has 1568 NaN or infinite values"),
        ({"x": np.full((2, 28, 28), np.inf)}, "NaN or infinite"),
        ({"x": np.full((2, 28, 28), 2.0, np.float32)}, r"float 'x' must lie in \[0, 1\], found \[2, 2\]"),
        ({"x": np.zeros((3, 28, 28), np.uint8), "y": np.zeros(2, np.int64)}, "'y' must be 3 integer labels.*(2,)"),
        ({"x": np.zeros((3, 28, 28), np.uint8), "y": np.zeros(3, np.float32)}, "'y' must be 3 integer labels"),
        ({"x": np.zeros((3, 28, 28), np.uint8), "y": -np.ones(3, np.int64)}, "'y' has negative labels"),
        ({"x": np.zeros((3, 28, 28), np.int32)}, "'x' must be uint8 or float in .*found int32"),
        ({"images": np.zeros((3, 28, 28), np.uint8)}, r"missing array 'x' \(found \['images'\]\)"),
        ({"x": np.zeros((1, 28, 28), np.uint8), "y": np.array([2]), "classes": np.array(["a"])}, "label 2 but"),
    ],
)
def test_npz_rejects_bad_batches(tmp_path: Path, arrays: dict, match: str) -> None:
    path = tmp_path / "batch.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=r"batch\.npz: .*" + match):
        load_npz(path)


def test_npz_reports_every_problem_at_once(tmp_path: Path) -> None:
    np.savez(tmp_path / "b.npz", x=np.full((2, 28, 27), 3.0), y=np.array([0]))
    with pytest.raises(DataError, match=r"found shape .*; float 'x' must lie .*; 'y' must be 2 integer labels"):
        load_npz(tmp_path / "b.npz")


def test_npz_accepts_good_batches(tmp_path: Path) -> None:
    np.savez(tmp_path / "u8.npz", x=np.full((2, 28, 28), 7, np.uint8), y=np.array([1, 2]))
    np.savez(tmp_path / "f.npz", x=np.full((2, 1, 28, 28), 1.0, np.float32))
    np.savez(tmp_path / "r.npz", x=np.array([[[0.0, 0.5], [0.2, 1.0]]]), y=np.array([0]), classes=np.array(["cat"]))
    a = load_npz(tmp_path / "u8.npz")
    b = load_dataset(tmp_path / "f.npz")
    c = load_npz(tmp_path / "r.npz", image_size=2)
    assert a.y.tolist() == [1, 2] and a.x.max() == 7 and a.classes == ("0", "1", "2")
    assert b.y is None and b.x.shape == (2, 28, 28) and b.x.max() == 255 and b.classes == ()
    assert c.x.ravel().tolist() == [0, 128, 51, 255] and c.classes == ("cat",)


def test_npz_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip")
    with pytest.raises(DataError, match=r"junk\.npz: not a readable \.npz archive \(it starts with b'this i'"):
        load_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "good.npz", x=np.zeros((50, 28, 28), np.uint8))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "good.npz").read_bytes()[:1000])
    with pytest.raises(DataError, match=r"cut\.npz: not a readable \.npz archive"):
        load_npz(tmp_path / "cut.npz")
    np.save(tmp_path / "one.npy", np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "one.npz").write_bytes((tmp_path / "one.npy").read_bytes())
    with pytest.raises(DataError, match=r"one\.npz: .*single \.npy array"):
        load_npz(tmp_path / "one.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match=r"obj\.npz: not a readable \.npz archive"):
        load_npz(tmp_path / "obj.npz")
    with pytest.raises(DataError, match=r"absent\.npz: no such \.npz file"):
        load_npz(tmp_path / "absent.npz")
    assert zipfile.is_zipfile(tmp_path / "good.npz")  # the corrupt one above really was a cut zip


# --------------------------------------------------------------------------- dispatch


def test_load_dataset_dispatch(tmp_path: Path) -> None:
    _fake_fashion(tmp_path / "fm", n=5)
    _fake_fashion(tmp_path / "fm", n=2, split="test")
    assert len(load_dataset(tmp_path / "fm")) == 5 and len(load_dataset(str(tmp_path / "fm"), "test")) == 2
    assert load_dataset(tmp_path / "fm").classes == FASHION_MNIST_CLASSES

    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    Image.new("L", (28, 28)).save(tmp_path / "imgs" / "cat" / "a.png")
    assert load_dataset(tmp_path / "imgs", "test").classes == ("cat",)

    for split, classes in (("train", ("a", "b")), ("test", ("b",))):
        for c in classes:
            (tmp_path / "split" / split / c).mkdir(parents=True)
            Image.new("L", (28, 28)).save(tmp_path / "split" / split / c / "x.png")
    test = load_dataset(tmp_path / "split", "test")
    assert test.classes == ("a", "b") and test.y.tolist() == [1]  # labels agree with the train split
    assert len(load_dataset(tmp_path / "split", "train")) == 2

    with open(tmp_path / "b.NPZ", "wb") as f:  # np.savez would append .npz to the name
        np.savez(f, x=np.zeros((3, 28, 28), np.uint8))
    assert len(load_dataset(tmp_path / "b.NPZ")) == 3


def test_load_dataset_rejects_other_things(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothing\.bin: no such file or folder; expected a folder of Fashion-MNIST"):
        load_dataset(tmp_path / "nothing.bin")
    (tmp_path / "data.csv").write_text("1,2,3")
    with pytest.raises(DataError, match=r"data\.csv: not an \.npz file; expected"):
        load_dataset(tmp_path / "data.csv")
    (tmp_path / "flat").mkdir()
    Image.new("L", (28, 28)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="neither IDX files nor class sub-folders"):
        load_dataset(tmp_path / "flat")
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no test/ folder"):
        load_dataset(tmp_path / "only_train", "test")
    with pytest.raises(DataError, match="split must be"):
        load_dataset(tmp_path, "val")
