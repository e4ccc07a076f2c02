"""Local samples by reference: the images the service stored, read back for adaptation.

The service keeps each local sample as a reference, ``FILE#INDEX`` for a row of an ``.npz``
batch or the path of an image file (see ``service.serving.ingest`` and ``service.api.feedback``). The
adaptation worker gets ``(ref, label)`` pairs and reads them here, each batch file once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lifelong.data.datasets import FASHION_MNIST_CLASSES, ArrayDataset, load_npz, read_image
from lifelong.errors import DataError

__all__ = ["load_refs"]


def _split_ref(ref: str) -> tuple[str, int | None]:
    path, sep, index = ref.rpartition("#")
    if sep and index.isdigit():
        return path, int(index)
    return ref, None


def load_refs(
    items: Sequence[tuple[str, int]], *, classes: Sequence[str] = FASHION_MNIST_CLASSES, skip_missing: bool = True
) -> tuple[ArrayDataset, list[str]]:
    """The labelled images of ``items`` (``(ref, label)``), and what could not be read.

    Args:
        items: References and labels, as the service's samples table holds them.
        classes: Class names of the labels.
        skip_missing: Skip a reference whose file is gone or unreadable (retention may have
            removed it) and name it in the second return value; otherwise raise.

    Raises:
        DataError: no item could be read, or one could not and ``skip_missing`` is False.
    """
    batches: dict[str, np.ndarray] = {}
    images, labels, problems = [], [], []
    for ref, label in items:
        path, index = _split_ref(str(ref))
        try:
            if index is None:
                image = read_image(path)
            else:
                if path not in batches:
                    batches[path] = load_npz(Path(path)).x
                batch = batches[path]
                if index >= len(batch):
                    raise DataError(f"{path} holds {len(batch)} images; reference {ref} is past its end")
                image = batch[index]
        except DataError as exc:
            if not skip_missing:
                raise
            problems.append(f"{ref}: {exc}")
            continue
        images.append(image)
        labels.append(int(label))
    if not images:
        detail = f" ({problems[0]})" if problems else ""
        raise DataError(f"none of the {len(items)} local samples could be read{detail}")
    return ArrayDataset(np.stack(images), np.asarray(labels, np.int64), tuple(classes), "local samples"), problems
