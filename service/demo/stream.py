"""The demo's traffic: Fashion-MNIST test images sent to the daemon, clean or shifted, with labels.

:func:`shift_images` makes the covariate shifts the demo injects (the four of the drift
benchmark, on ``uint8`` images so they travel as the daemon's clients send them).
:class:`Streamer` sends batches through :class:`~service.api.client.Client`, scores every answer
against the true label, sends the true label back as feedback for a fraction of them (an
operator correcting some predictions), and keeps the tallies the live line and the report
show. Numpy, Pillow and the client only: no torch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from service.api.client import Client, ClientPrediction

__all__ = ["SHIFTS", "PhaseTally", "Streamer", "shift_images"]

SHIFTS = ("noise", "contrast", "brightness", "rotation")
"""Shifts the demo can inject; see :func:`shift_images`."""

# Strengths that cost a model trained on clean Fashion-MNIST about half its accuracy or more
# (measured on the demo's initial choice: 84% clean; noise 34%, contrast 31%, brightness 32%,
# rotation 57%), from changes a person barely notices: the models are fragile exactly where a
# camera drifts, which is what the demo shows.
NOISE_STD = 0.2  # of the [0, 1] range: a grainy sensor
CONTRAST = 0.9  # pixel values squeezed to 90% of their range around mid-grey: a slightly washed-out lens
BRIGHTNESS = 0.05  # of the range added: a slightly over-exposed camera (the background is no longer black)
ROTATION_DEG = 20.0  # a camera knocked askew


def shift_images(
    name: str,
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    noise_std: float = NOISE_STD,
    contrast: float = CONTRAST,
    brightness: float = BRIGHTNESS,
    rotation_deg: float = ROTATION_DEG,
) -> np.ndarray:
    """``uint8 (N, 28, 28)`` images as a shifted camera would deliver them, ``uint8`` again.

    Args:
        name: One of :data:`SHIFTS`.
        images: The clean images.
        rng: Draws the noise (the other shifts are deterministic).
        noise_std, contrast, brightness, rotation_deg: The strengths (the demo's by default;
            the drift benchmark passes its own): gaussian noise of ``noise_std`` of full
            scale; pixels squeezed to ``contrast`` of their range around mid-grey;
            ``brightness`` of full scale added; a bilinear rotation by ``rotation_deg``.

    Raises:
        ValueError: ``name`` is not a shift, or ``images`` are not ``uint8 (N, H, W)``.
    """
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; expected one of {', '.join(SHIFTS)}")
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(f"expected uint8 images (N, H, W), got {x.dtype} {x.shape}")
    if name == "rotation":
        return np.stack([np.asarray(Image.fromarray(i).rotate(rotation_deg, resample=Image.BILINEAR)) for i in x])
    f = x.astype(np.float32) / 255.0
    if name == "noise":
        f = f + rng.normal(0.0, noise_std, f.shape).astype(np.float32)
    elif name == "contrast":
        f = (f - 0.5) * contrast + 0.5
    else:
        f = f + brightness
    return np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8)


@dataclass
class PhaseTally:
    """Predictions scored in one phase of the demo, overall and per serving model."""

    n: int = 0
    correct: int = 0
    by_model: dict[str, list[int]] = field(default_factory=dict)  # model -> [n, correct]
    latency_ms: list[float] = field(default_factory=list)  # the daemon's per-request latency

    def add(self, model: str, n: int, correct: int, latency_ms: float) -> None:
        self.n += n
        self.correct += correct
        counts = self.by_model.setdefault(model, [0, 0])
        counts[0] += n
        counts[1] += correct
        if np.isfinite(latency_ms):
            self.latency_ms.append(float(latency_ms))

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    def to_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latency_ms) if self.latency_ms else None
        return {
            "samples": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "by_model": {
                m: {"samples": c[0], "accuracy": c[1] / c[0] if c[0] else None} for m, c in self.by_model.items()
            },
            "request_latency_ms": None
            if lat is None
            else {"requests": len(lat), "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95))},
        }


class Streamer:
    """Sends test images to the daemon and scores the answers.

    Args:
        client: Talks to the daemon.
        images: ``uint8 (N, 28, 28)`` images the demo draws from.
        labels: Their true classes.
        label_fraction: Share of each batch whose true label is sent back as feedback.
        seed: Seeds the noise and the choice of labelled samples.
        window: Samples the live accuracy is computed over.
    """

    def __init__(
        self,
        client: Client,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        label_fraction: float = 0.5,
        seed: int = 0,
        window: int = 500,
    ) -> None:
        if not 0.0 <= label_fraction <= 1.0:
            raise ValueError(f"label_fraction={label_fraction!r}; expected a share in [0, 1]")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.client, self.images, self.labels = client, images, np.asarray(labels, np.int64)
        self.label_fraction = label_fraction
        self.rng = np.random.default_rng(seed)
        self.recent: deque[bool] = deque(maxlen=window)
        self.tallies: dict[str, PhaseTally] = {}
        self.sent = 0
        self.labelled = 0
        self.last_model: str | None = None

    def send(
        self, index: np.ndarray, phase: str, shift: str | None = None, *, expect: Collection[str] | None = None
    ) -> ClientPrediction:
        """Send the images at ``index`` (shifted by ``shift``), score them under ``phase``, label some.

        With ``expect``, an answer from any other model (a swap not yet noticed) is scored under
        ``"transition"`` instead, so that a phase holds only what the models it is about served.
        """
        x = self.images[index]
        if shift is not None:
            x = shift_images(shift, x, self.rng)
        answer = self.client.predict(x)
        y = self.labels[index]
        right = answer.classes == y
        self.recent.extend(bool(r) for r in right)
        if expect is not None and answer.model not in expect:
            phase = "transition"
        self.tallies.setdefault(phase, PhaseTally()).add(answer.model, len(y), int(right.sum()), answer.latency_ms)
        self.sent += len(y)
        self.last_model = answer.model
        chosen = np.flatnonzero(self.rng.random(len(y)) < self.label_fraction)
        if len(chosen):
            self.labelled += self.client.feedback(labels=[(answer.request_id, int(i), int(y[i])) for i in chosen])
        return answer

    @property
    def window_accuracy(self) -> float | None:
        """Accuracy over the last ``window`` samples sent, whatever their phase."""
        return sum(self.recent) / len(self.recent) if self.recent else None
