"""Kept drift references: the embeddings and classes a model's drift monitor compares with.

A drift monitor takes the first ``drift.reference_window`` samples a newly deployed model
serves as its reference. Were that reference lost at a restart, a daemon restarted after a
shift would take the shifted data as the reference and never see the shift, so once
collected it is kept in ``STATE/drift/MODEL.npz`` (``D`` float32 values and one class per
sample: 2000 x 128-dim embeddings are about 1 MB), written under a temporary name and
renamed. Only the newest :data:`KEEP_REFERENCES` files are kept. A file that cannot be read,
of another format, or smaller than the reference asked for is ignored (collected anew).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

__all__ = ["KEEP_REFERENCES", "REFERENCE_FORMAT", "ReferenceFiles"]

logger = logging.getLogger(__name__)

REFERENCE_FORMAT = 1
"""Version of a kept reference file."""
KEEP_REFERENCES = 8
"""Reference files kept (the newest)."""
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ReferenceFiles:
    """The kept references in one folder, one file per model id.

    Args:
        folder: ``STATE/drift``; created on the first save.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, model_id: str) -> Path | None:
        """The file of ``model_id``; None for an id that is not a plain file name (never kept)."""
        return self.folder / f"{model_id}.npz" if _SAFE_ID.match(model_id) else None

    def save(self, model_id: str, embeddings: np.ndarray, classes: np.ndarray) -> Path | None:
        """Keep ``(N, D)`` embeddings and ``(N,)`` classes of ``model_id``; the file, or None if not kept."""
        path = self.path(model_id)
        if path is None:
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    format=np.array(REFERENCE_FORMAT),
                    embeddings=np.asarray(embeddings, np.float32),
                    classes=np.asarray(classes, np.int64),
                )
            os.replace(tmp, path)
            self._prune(keep=path)
        except OSError as exc:
            logger.warning("cannot keep the drift reference of %s at %s: %s", model_id, path, exc)
            return None
        logger.info("drift reference of %s kept: %d samples -> %s", model_id, len(embeddings), path)
        return path

    def load(self, model_id: str, size: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The kept ``(embeddings, classes)`` of ``model_id`` if there are at least ``size``, else None."""
        path = self.path(model_id)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                fmt, emb, classes = int(z["format"]), z["embeddings"], z["classes"]
        except (OSError, ValueError, KeyError, EOFError) as exc:
            logger.warning("ignoring the kept drift reference %s: %s", path, exc)
            return None
        if fmt != REFERENCE_FORMAT or emb.ndim != 2 or classes.shape != (len(emb),):
            logger.warning("ignoring the kept drift reference %s: format %s, shapes %s", path, fmt, emb.shape)
            return None
        if len(emb) < size:
            logger.info(
                "the kept reference of %s has %d samples, fewer than %d: collecting anew", model_id, len(emb), size
            )
            return None
        return emb, classes

    def drop(self, model_id: str) -> None:
        """Forget ``model_id``'s reference (it no longer fits its monitor)."""
        path = self.path(model_id)
        if path is not None:
            path.unlink(missing_ok=True)

    def _prune(self, keep: Path) -> None:
        files = sorted(self.folder.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in [p for p in files if p != keep][KEEP_REFERENCES - 1 :]:
            old.unlink(missing_ok=True)
