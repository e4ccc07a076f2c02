"""How old the device profile is, whether it still describes this device, and how well its
latency model predicts the model serving: the ``profile`` part of ``/v1/status``.

An operator reads three things from it: when the profile was taken (``lifelong profile``
re-takes it), whether the device it was taken on is this one with the threads serving now
(the fingerprint), and how far its latency model's figure for the serving model is from the
p50 the daemon measures on it (the latency probe at the policy's batch size). A large gap
means the search ranks candidates on figures that do not hold here: the measured picks and
the export's own timing (:mod:`lifelong.search.measure`) are what the deployed choice rests on.

The profile is read once per version of its file (size and mtime); the prediction once per
serving subnet and batch. No torch here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from lifelong.device.profile import DeviceProfile, device_fingerprint
from lifelong.errors import LifelongError
from lifelong.space.config import SearchSpace

__all__ = ["ProfileStatus"]

logger = logging.getLogger(__name__)


class ProfileStatus:
    """The device profile at ``path`` as the status shows it.

    Args:
        path: ``STATE/profile/device.json`` (it may not exist).
        space: The search space subnet names are parsed in.
    """

    def __init__(self, path: Path, space: SearchSpace | None = None) -> None:
        self.path, self.space = Path(path), space or SearchSpace()
        self._key: tuple[int, int] | None = None
        self._profile: DeviceProfile | None = None
        self._error: str | None = None
        self._fingerprints: dict[int, dict[str, Any]] = {}
        self._predicted: dict[tuple[str, int], float | None] = {}

    def _load(self) -> DeviceProfile | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._key, self._profile, self._error = None, None, None
            return None
        key = (st.st_mtime_ns, st.st_size)
        if key != self._key:
            self._key, self._predicted = key, {}
            try:
                self._profile, self._error = DeviceProfile.load(self.path), None
            except LifelongError as exc:
                self._profile, self._error = None, str(exc)
        return self._profile

    def _fingerprint(self, threads: int) -> dict[str, Any]:
        if threads not in self._fingerprints:
            self._fingerprints[threads] = device_fingerprint(threads)
        return self._fingerprints[threads]

    def _predict(self, profile: DeviceProfile, subnet: str, batch: int) -> float | None:
        key = (subnet, batch)
        if key not in self._predicted:
            try:
                self._predicted[key] = float(profile.predict(self.space, self.space.parse(subnet), batch))
            except (LifelongError, KeyError, ValueError) as exc:  # another space, or a batch not profiled
                logger.debug("no prediction for %s at batch %d: %s", subnet, batch, exc)
                self._predicted[key] = None
        return self._predicted[key]

    def status(self, *, subnet: str | None, batch: int, threads: int, live_p50_ms: float | None) -> dict[str, Any]:
        """The status part: ``present``, ``age_s``, ``stale`` (reasons), and for the serving
        ``subnet`` at ``batch``: ``predicted_ms``, ``live_p50_ms`` and ``error`` (predicted /
        live - 1)."""
        profile = self._load()
        if profile is None:
            out: dict[str, Any] = {"present": False, "path": str(self.path)}
            if self._error:
                out["error"] = self._error
            return out
        out = {
            "present": True,
            "path": str(self.path),
            "created": profile.created,
            "age_s": max(0.0, time.time() - profile.created),
            "stale": profile.stale_reasons(self._fingerprint(threads)),
            "batches": list(profile.batches),
            "batch": batch,
            "threads": int(profile.fingerprint.get("threads", threads)),
        }
        predicted = None if subnet is None else self._predict(profile, subnet, batch)
        if predicted is not None:
            out["predicted_ms"] = predicted
            if live_p50_ms:
                out["live_p50_ms"] = live_p50_ms
                out["prediction_error"] = predicted / live_p50_ms - 1.0
        return out
