"""Datasets of the default task and of the gateway's local data, as uint8 image arrays.

Three sources, each a function, and :func:`load_dataset` to pick one from a path:

* Fashion-MNIST IDX files (the Debian package ``dataset-fashion-mnist``), gzipped or not:
  :func:`load_fashion_mnist`, built on :func:`read_idx`;
* a folder with one sub-folder of PNG/JPEG images per class (optionally under ``train/``
  and ``test/``): :func:`load_image_folder`;
* an ``.npz`` batch with ``x`` and an optional ``y``: :func:`load_npz`.

All become an :class:`ArrayDataset` of ``uint8 (N, H, W)`` grayscale images with optional
``int64 (N,)`` labels; :meth:`ArrayDataset.as_float` gives the model's input. Bad input
raises :class:`~lifelong.errors.DataError` naming the file, what was found and what was
expected.

Only numpy, Pillow and the standard library: the serving process reads its inbox with this
module and never imports torch.
"""

from __future__ import annotations

import gzip
import logging
import os
import threading
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lifelong.errors import DataError

__all__ = [
    "DEFAULT_FASHION_MNIST_DIR",
    "read_image",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ENV",
    "IMAGE_SUFFIXES",
    "SPLITS",
    "ArrayDataset",
    "fashion_mnist_dir",
    "load_dataset",
    "load_fashion_mnist",
    "load_image_folder",
    "load_npz",
    "read_idx",
]

logger = logging.getLogger(__name__)

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "LIFELONG_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

_FASHION_PREFIX = {"train": "train", "test": "t10k"}
_FASHION_SIZE = 28
# IDX type codes (http://yann.lecun.com/exdb/mnist/): multi-byte types are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_NPY_MAGIC = b"\x93NUMPY"
_MAX_LISTED = 5  # problems listed in one message before "and N more"
_ACCEPTED = (
    "expected a folder of Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz] and the like), "
    "a folder with one sub-folder of PNG/JPEG images per class (optionally under train/ and test/), "
    "or an .npz file with an array 'x' (N, H, W) and an optional 'y' (N,)"
)

# Parsed Fashion-MNIST splits keyed by the files' (path, mtime, size): a process that loads
# the same split twice (train, then evaluate) gunzips it once. Arrays are read-only so that
# no caller can change what the next one gets.
_CACHE: dict[tuple[tuple[str, int, int], ...], tuple[np.ndarray, np.ndarray]] = {}
_CACHE_MAX = 4
_CACHE_LOCK = threading.Lock()


def fashion_mnist_dir() -> Path:
    """The Fashion-MNIST folder: ``$LIFELONG_FASHION_MNIST_DIR`` if set, else the Debian one."""
    return Path(os.environ.get(FASHION_MNIST_ENV) or DEFAULT_FASHION_MNIST_DIR)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return f"{type(a).__name__} {a!r}"[:80]


def _listed(items: Sequence[str]) -> str:
    more = f"; and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return "; ".join(items[:_MAX_LISTED]) + more


@dataclass(frozen=True, eq=False, repr=False)  # eq=False: the generated __eq__ cannot compare arrays
class ArrayDataset:
    """Grayscale images with optional labels, validated on construction.

    Attributes:
        x: ``uint8 (N, H, W)`` images.
        y: ``int64 (N,)`` labels, indices into ``classes`` when it is not empty; or ``None``.
            Other integer dtypes are converted.
        classes: Class names (may be empty when unknown).
        source: Where the data came from, for logs and checkpoint metadata.
    """

    x: np.ndarray
    y: np.ndarray | None
    classes: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        what = self.source or "dataset"
        if not isinstance(self.x, np.ndarray) or self.x.dtype != np.uint8 or self.x.ndim != 3:
            raise DataError(f"{what}: images x must be a uint8 array (N, H, W), got {_describe(self.x)}")
        if not all(isinstance(c, str) for c in self.classes):
            raise DataError(f"{what}: classes must be strings, got {self.classes!r}")
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.y is None:
            return
        if not isinstance(self.y, np.ndarray) or self.y.dtype.kind not in "iu" or self.y.shape != (len(self.x),):
            n = len(self.x)
            raise DataError(f"{what}: labels y must be {n} integers, shape ({n},), got {_describe(self.y)}")
        if self.y.dtype != np.int64:
            object.__setattr__(self, "y", self.y.astype(np.int64))
        if len(self.y):
            lo, hi = int(self.y.min()), int(self.y.max())
            if lo < 0 or (self.classes and hi >= len(self.classes)):
                top = len(self.classes) - 1 if self.classes else "inf"
                raise DataError(f"{what}: labels must lie in 0..{top} (one per class), found {lo}..{hi}")

    def __len__(self) -> int:
        return len(self.x)

    def __repr__(self) -> str:
        labels = "unlabelled" if self.y is None else f"{len(self.classes)} classes"
        return f"ArrayDataset({len(self)} x {self.x.shape[1]}x{self.x.shape[2]}, {labels}, source={self.source!r})"

    def subset(self, indices: np.ndarray | Sequence[int]) -> ArrayDataset:
        """The examples at ``indices`` (integer positions), in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.x[idx], None if self.y is None else self.y[idx], self.classes, self.source)

    def head(self, n: int) -> ArrayDataset:
        """The first ``n`` examples (all of them if there are fewer); views, no copy."""
        if n < 0:
            raise DataError(f"head needs n >= 0, got {n}")
        return ArrayDataset(self.x[:n], None if self.y is None else self.y[:n], self.classes, self.source)

    def split(self, val_fraction: float, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
        """A deterministic (train, validation) split; both keep the original order.

        Labelled data is stratified: each class gives ``val_fraction`` of its examples, with
        the rounding spread so that the validation part has ``round(N * val_fraction)``
        examples in all. The same seed always gives the same split.

        Args:
            val_fraction: Share of examples for validation, in ``[0, 1)``.
            seed: Seed of the shuffle that picks the validation examples.
        """
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        rng = np.random.default_rng(seed)
        n_val = round(len(self) * val_fraction)
        if self.y is None:
            val_idx = rng.permutation(len(self))[:n_val]
        else:
            groups = [np.flatnonzero(self.y == c) for c in np.unique(self.y)]
            quota = np.array([len(g) * val_fraction for g in groups])
            take = np.floor(quota).astype(np.int64)
            # Largest remainders first (stable, so ties go to the lower class) get the rest.
            for i in np.argsort(-(quota - take), kind="stable")[: max(n_val - int(take.sum()), 0)]:
                take[i] += 1
            val_idx = np.concatenate([rng.permutation(g)[:k] for g, k in zip(groups, take, strict=True)] or [[]])
        val_mask = np.zeros(len(self), dtype=bool)
        val_mask[val_idx.astype(np.int64)] = True
        return self.subset(np.flatnonzero(~val_mask)), self.subset(np.flatnonzero(val_mask))

    def concat(self, other: ArrayDataset) -> ArrayDataset:
        """This dataset followed by ``other``; image sizes, classes and labelling must agree."""
        problems = []
        if other.x.shape[1:] != self.x.shape[1:]:
            problems.append(f"images of {self.x.shape[1:]} and {other.x.shape[1:]}")
        if (self.y is None) != (other.y is None):
            problems.append("labelled and unlabelled data")
        if self.classes and other.classes and self.classes != other.classes:
            problems.append(f"classes {self.classes} and {other.classes}")
        if problems:
            names = f"{self.source or 'dataset'} and {other.source or 'dataset'}"
            raise DataError(f"cannot concat {names}: {', '.join(problems)}")
        y = None if self.y is None or other.y is None else np.concatenate([self.y, other.y])
        source = "+".join(s for s in (self.source, other.source) if s)
        return ArrayDataset(np.concatenate([self.x, other.x]), y, self.classes or other.classes, source)

    def as_float(self) -> np.ndarray:
        """The model's input: ``float32 (N, 1, H, W)``, pixel / 255, in ``[0, 1]``."""
        out = self.x[:, None].astype(np.float32)  # (N, 1, H, W)
        out /= np.float32(255.0)
        return out


# --------------------------------------------------------------------------- IDX / Fashion-MNIST


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """The file's bytes, gunzipped if it is gzip data, and whether it was."""
    try:
        with path.open("rb") as f:
            gz = f.read(2) == _GZIP_MAGIC or path.suffix == ".gz"
        if not gz:
            return path.read_bytes(), False
        with gzip.open(path, "rb") as f:
            return f.read(), True
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc}); expected a gzip-compressed IDX file") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc.strerror or exc})") from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file, gzipped (detected from its content or ``.gz`` name) or raw.

    Returns:
        The array with the declared shape, in native byte order.

    Raises:
        DataError: The file is missing, not gzip data though named ``.gz``, not IDX (bad
            magic number), or longer or shorter than its header declares.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such IDX file")
    raw, gz = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(
            f"{path}: not an IDX file (magic number 0x{raw[:4].hex() or 'nothing'}; expected 0x0000, "
            "a type code such as 0x08 for unsigned bytes and the number of dimensions)"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header (expected {header} bytes, found {len(raw)})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "has trailing data"
        raise DataError(
            f"{path}: {state}: the IDX header declares shape {dims} of {dtype.name}, {expected} bytes in all, "
            f"but the {'uncompressed ' if gz else ''}data holds {len(raw)} bytes"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr if dtype.itemsize == 1 else arr.astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"{root}: missing {stem}.gz (or {stem}); expected the four Fashion-MNIST IDX files "
        "(apt-get install dataset-fashion-mnist installs them)"
    )


def _cache_key(*paths: Path) -> tuple[tuple[str, int, int], ...]:
    stats = [(p.resolve(), p.stat()) for p in paths]
    return tuple((str(p), st.st_mtime_ns, st.st_size) for p, st in stats)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> ArrayDataset:
    """The Fashion-MNIST ``train`` (60,000) or ``test`` (10,000) split from its IDX files.

    Parsed arrays are cached per file path and modification time, so a second load of the
    same split in one process is cheap; they are read-only.

    Args:
        split: ``"train"`` or ``"test"``.
        root: The folder of IDX files; default :func:`fashion_mnist_dir`.
    """
    _check_split(split)
    root = Path(root) if root is not None else fashion_mnist_dir()
    if not root.is_dir():
        raise DataError(
            f"Fashion-MNIST not found: {root} is not a folder. Install it as root with "
            f"`apt-get install dataset-fashion-mnist`, set {FASHION_MNIST_ENV}, or pass `--data DIR` "
            "with your own images"
        )
    prefix = _FASHION_PREFIX[split]
    images_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    key = _cache_key(images_path, labels_path)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        logger.debug("Fashion-MNIST %s from the in-process cache (%s)", split, root)
        x, y = cached
    else:
        x, y = _parse_fashion(split, images_path, labels_path)
        with _CACHE_LOCK:
            _CACHE[key] = (x, y)
            while len(_CACHE) > _CACHE_MAX:
                del _CACHE[next(iter(_CACHE))]
        logger.info("loaded Fashion-MNIST %s: %d images from %s", split, len(x), root)
    return ArrayDataset(x, y, FASHION_MNIST_CLASSES, f"fashion-mnist:{split}:{root}")


def _parse_fashion(split: str, images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images_path), read_idx(labels_path)
    s = _FASHION_SIZE
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (s, s):
        raise DataError(f"{images_path}: {split} images should be uint8 (N, {s}, {s}), got {_describe(x)}")
    if y.dtype != np.uint8 or y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"{labels_path}: {len(x)} {split} images but labels of shape {y.shape} ({y.dtype}); "
            f"expected ({len(x)},) uint8"
        )
    if len(y) and y.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{labels_path}: {split} labels must lie in 0..9, found {int(y.min())}..{int(y.max())}")
    y = y.astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


# --------------------------------------------------------------------------- image folders


def _subfolders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_image(path: str | os.PathLike[str], size: int = 28) -> np.ndarray:
    """A PNG or JPEG file as a grayscale uint8 ``(size, size)`` image (resized if needed).

    Raises:
        DataError: the file is not a readable PNG or JPEG.
    """
    from PIL import Image, ImageOps  # here: the serving process loads Pillow only once it reads an image file

    try:
        with Image.open(path, formats=("PNG", "JPEG")) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                # Transparent pixels become black, Fashion-MNIST's background.
                img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), img.convert("RGBA"))
            gray = img.convert("L")
            if gray.size != (size, size):
                gray = gray.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(gray, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # Pillow's errors on corrupt files
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc}); expected a PNG or JPEG") from None


def load_image_folder(root: str | Path, image_size: int = 28, classes: Sequence[str] | None = None) -> ArrayDataset:
    """Images in one sub-folder per class, as grayscale ``image_size`` squares.

    Files ending ``.png``, ``.jpg`` or ``.jpeg`` (any case) are read; other files are
    skipped. Colour images are converted to grayscale ("L"), transparent pixels become
    black, and images of another size are resized (without keeping the aspect ratio).

    Args:
        root: The folder of class sub-folders.
        image_size: Side of the square images returned.
        classes: Class names in label order; default the sorted sub-folder names. Given,
            every sub-folder must be one of them (a class may have no folder).

    Raises:
        DataError: No class sub-folders, a sub-folder outside ``classes``, a class folder
            without images, or images that cannot be decoded (all of them listed).
    """
    root = Path(root)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected one sub-folder of PNG/JPEG images per class")
    found = _subfolders(root)
    if not found:
        raise DataError(f"{root}: no class sub-folders; expected {root}/<class>/<image>.png (or .jpg)")
    if classes is None:
        names = tuple(found)
    else:
        names = tuple(classes)
        unknown = [n for n in found if n not in names]
        if not names or len(set(names)) != len(names) or unknown:
            raise DataError(f"{root}: sub-folders {unknown} are not among the classes {list(names)}")
    files: list[tuple[Path, int]] = []
    empty = []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            logger.info("%s: no folder for class %r", root, name)
            continue
        images = sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not images:
            empty.append(name)
        files.extend((p, label) for p in images)
    if empty:
        raise DataError(f"{root}: no PNG/JPEG images (.png, .jpg, .jpeg) in the class folders {empty}")
    x = np.empty((len(files), image_size, image_size), dtype=np.uint8)  # (N, H, W)
    bad = []
    for i, (path, _) in enumerate(files):
        try:
            x[i] = read_image(path, image_size)
        except DataError as exc:
            bad.append(str(exc))
    if bad:
        raise DataError(f"{root}: {len(bad)} of {len(files)} images cannot be read: {_listed(bad)}")
    y = np.array([label for _, label in files], dtype=np.int64)
    logger.info("loaded %d images of %d classes from %s", len(x), len(names), root)
    return ArrayDataset(x, y, names, f"images:{root}")


# --------------------------------------------------------------------------- npz batches


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with path.open("rb") as f:
            start = f.read(6)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if start.startswith(_NPY_MAGIC):
        raise DataError(
            f"{path}: not a readable .npz archive: it is a single .npy array; expected np.savez(path, x=..., y=...)"
        )
    if not start.startswith(b"PK"):
        raise DataError(f"{path}: not a readable .npz archive (it starts with {start!r}, not the zip signature b'PK')")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as exc:
        # ValueError also covers object arrays, which allow_pickle=False refuses.
        raise DataError(f"{path}: not a readable .npz archive ({type(exc).__name__}: {exc})") from exc


def load_npz(path: str | Path, image_size: int = 28) -> ArrayDataset:
    """A batch saved with ``np.savez``: images ``x`` and optional labels ``y``.

    ``x`` is ``(N, H, W)`` or ``(N, 1, H, W)`` with ``H == W == image_size``: uint8, or float
    in ``[0, 1]`` (scaled by ``round(x * 255)``). ``y`` is ``(N,)`` non-negative integers. An
    optional string array ``classes`` names the labels. Every problem is reported at once.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such .npz file")
    arrays = _npz_arrays(path)
    if "x" not in arrays:
        raise DataError(
            f"{path}: missing array 'x' (found {sorted(arrays)}); expected images 'x' (N, H, W) and optional labels 'y'"
        )
    x, y, s = arrays["x"], arrays.get("y"), image_size
    problems = []
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]  # (N, H, W)
    if x.ndim != 3 or x.shape[1:] != (s, s):
        problems.append(f"'x' must be (N, {s}, {s}) or (N, 1, {s}, {s}), found shape {x.shape}")
    if x.dtype.kind == "f":
        finite = np.isfinite(x)
        if not finite.all():
            problems.append(f"'x' has {int((~finite).sum())} NaN or infinite values; expected floats in [0, 1]")
        elif x.size and (x.min() < 0.0 or x.max() > 1.0):
            problems.append(f"float 'x' must lie in [0, 1], found [{x.min():.4g}, {x.max():.4g}]")
    elif x.dtype != np.uint8:
        problems.append(f"'x' must be uint8 or float in [0, 1], found {x.dtype}")
    if y is not None:
        if y.dtype.kind not in "iu" or y.shape != (len(x),):
            problems.append(f"'y' must be {len(x)} integer labels, shape ({len(x)},), found {_describe(y)}")
        elif len(y) and y.min() < 0:
            problems.append(f"'y' has negative labels (min {int(y.min())}); expected class indices >= 0")
    classes: tuple[str, ...] = ()
    if "classes" in arrays:
        c = arrays["classes"]
        if c.dtype.kind != "U" or c.ndim != 1:
            problems.append(f"'classes' must be a 1-D array of strings, found {_describe(c)}")
        else:
            classes = tuple(str(n) for n in c)
    if not problems and y is not None and classes and len(y) and int(y.max()) >= len(classes):
        problems.append(f"'y' has label {int(y.max())} but 'classes' names only {len(classes)} classes")
    if problems:
        raise DataError(f"{path}: {'; '.join(problems)}")
    if x.dtype.kind == "f":
        x = np.rint(x * 255.0).astype(np.uint8)
    if y is not None and not classes and len(y):
        classes = tuple(str(i) for i in range(int(y.max()) + 1))
    logger.info("loaded %d images from %s", len(x), path)
    return ArrayDataset(np.ascontiguousarray(x), None if y is None else y.astype(np.int64), classes, f"npz:{path}")


# --------------------------------------------------------------------------- dispatch


def _has_idx(folder: Path) -> bool:
    return any(folder.glob("*-idx[13]-ubyte")) or any(folder.glob("*-idx[13]-ubyte.gz"))


def load_dataset(spec: str | Path, split: str = "train", *, image_size: int = 28) -> ArrayDataset:
    """Load the data at ``spec``, whatever its form.

    * a folder of IDX files: :func:`load_fashion_mnist` with that root;
    * a folder whose only sub-folders are ``train`` and/or ``test``: :func:`load_image_folder`
      on the ``split`` one, with the class names of both so that labels agree across splits;
    * another folder with sub-folders: :func:`load_image_folder` (all of it, whatever ``split``);
    * an ``.npz`` file: :func:`load_npz` (all of it, whatever ``split``).

    Args:
        spec: The path.
        split: ``"train"`` or ``"test"``.
        image_size: Side of the images of an image folder or ``.npz`` file.
    """
    _check_split(split)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return _whole(load_npz(path, image_size), split)
        raise DataError(f"{path}: not an .npz file; {_ACCEPTED}")
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder; {_ACCEPTED}")
    if _has_idx(path):
        if image_size != _FASHION_SIZE:
            side = _FASHION_SIZE
            raise DataError(f"{path}: Fashion-MNIST images are {side}x{side}, not image_size={image_size}")
        return load_fashion_mnist(split, path)
    subs = _subfolders(path)
    if not subs:
        raise DataError(f"{path}: a folder with neither IDX files nor class sub-folders; {_ACCEPTED}")
    if set(subs) <= set(SPLITS):
        if split not in subs:
            raise DataError(f"{path}: has {subs} but no {split}/ folder of class sub-folders")
        classes = sorted({c for s in subs for c in _subfolders(path / s)})
        return load_image_folder(path / split, image_size, classes)
    return _whole(load_image_folder(path, image_size), split)


def _whole(ds: ArrayDataset, split: str) -> ArrayDataset:
    if split != "train":
        logger.info("%s has no %s split of its own; using all of it", ds.source, split)
    return ds
