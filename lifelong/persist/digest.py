"""Content hashes of files: the one SHA-256 every persisted object is named or checked by.

No torch and no numpy here, so the serving process, the CLI and the demo can hash a
checkpoint, a predictor or a model without loading what they hash.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_sha256"]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (checkpoints are tens of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
