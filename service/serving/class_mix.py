"""The serving model's class-mix correction: a label-free answer to a change of class mix.

When a drift begins, :meth:`ClassMix.judge` asks whether a change of class mix explains it
(:func:`~lifelong.drift.priors.class_mix_test`: the live window of embeddings against the model's
reference re-weighted per predicted class). If it does, the new class priors are estimated
from the served probabilities alone (EM, :func:`~lifelong.drift.priors.em_priors`) and the runtime
adds ``log(q / p)`` to every logit from the next request on: no training, no labels, no
swap. While a correction is in force, :meth:`ClassMix.refresh` re-estimates the mix from the
latest window of served probabilities every fifth of a window and follows it; when the mix is back to the training
priors the correction is removed. Feedback, where it exists, judges the correction itself:
each label of a prediction served under it is scored with and without it
(:meth:`ClassMix.add_verdicts`), and when the uncorrected classes are right significantly more
often (a one-sided sign test on the labels where the two differ, :data:`OVERRULE_LEVEL`), the
correction is removed for good on this model and the drift it answered is answered again
(:meth:`ClassMix.take_overrule`): a covariate shift that the re-weighted test took for a change
of mix (rotation was: 70.9 -> 63.9% under the correction) is then adapted to like any other.

The training priors ``p`` are uniform unless the model's metadata says otherwise (the task,
Fashion-MNIST, has 6,000 training images per class). EM always runs on the model's own
posteriors: the drift feed removes the offset each batch was served with. A correction lives in the serving process only: after a restart or a
swap the new monitor sees the drift again and judges anew.

Used by one thread (the drift check job); :meth:`ClassMix.status` is read from any thread.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from lifelong.drift.priors import class_mix_test, em_priors, total_variation

if TYPE_CHECKING:
    from service.serving.runtime import Runtime

__all__ = ["COLLAPSED_PRIOR", "OVERRULE_LABELS", "OVERRULE_LEVEL", "ClassMix", "sign_test"]

logger = logging.getLogger(__name__)

COLLAPSED_PRIOR = 0.9
"""An estimated mix with this share or more on one class (where training had far less) is read
as the model's answers collapsing under new-looking inputs, not as a change of mix: once the
answers sit on one class, re-weighting the reference by predicted class explains any shift of
embeddings (a contrast shift on a small model was corrected to "class 2 100%" and the drift got
no other answer), and a correction toward that class only confirms the collapse."""

OVERRULE_LABELS = 100
"""Labels of corrected predictions needed before feedback may overrule the correction."""
OVERRULE_LEVEL = 0.01
"""One-sided sign-test p-value under which the uncorrected classes are judged better."""


def sign_test(wins: int, losses: int) -> float:
    """One-sided p-value of ``wins`` or more of ``wins + losses`` fair coin flips (exact)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(wins, n + 1))
    return min(1.0, tail / 2.0**n)


class ClassMix:
    """Judge, apply and follow the class-mix correction of the serving model.

    Args:
        runtime: Where the correction is applied (:meth:`~service.serving.runtime.Runtime.set_logit_offset`).
        level: The re-weighted test's p-value at or above which the class mix explains a drift.
        min_shift: Total variation between the estimated mix and the training priors below
            which no correction is made (and one in force is removed). EM's estimate from a
            window of 300 unshifted Fashion-MNIST images by a 77%-accurate linear model is
            0.10-0.20 from uniform (five draws), so a smaller change of mix is left alone.
    """

    def __init__(self, runtime: Runtime, *, level: float = 0.01, min_shift: float = 0.25) -> None:
        self.runtime, self.level, self.min_shift = runtime, level, min_shift
        self._model: str | None = None
        self._window = 500
        self._train: np.ndarray | None = None
        self._ref: tuple[np.ndarray, np.ndarray] | None = None
        self._emb: deque[np.ndarray] = deque()
        self._cls: deque[np.ndarray] = deque()
        self._probs: deque[np.ndarray] = deque()
        self._rows = 0
        self._fresh = 0  # rows since the last estimate
        self._mix: np.ndarray | None = None  # the mix the correction in force assumes
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {"in_force": False}
        self._history: deque[dict[str, Any]] = deque(maxlen=10)
        # feedback on the correction in force (API threads add, the drift job reads): labels,
        # right as served, right without the correction, the two differ and only one is right
        self._verdicts = {"labels": 0, "served": 0, "own": 0, "own_only": 0, "served_only": 0}
        self._overruled: str | None = None  # why feedback removed the correction on this model
        self._overrule_pending: str | None = None  # the same, until the drift check has taken it

    # -- feeding --------------------------------------------------------------------------------

    def watch(self, model_id: str, num_classes: int, window: int) -> None:
        """Start over for ``model_id`` (a new monitor: a swap, a restart, new drift settings)."""
        self._model, self._window = model_id, window
        self._train = np.full(num_classes, 1.0 / num_classes)
        self._ref = None
        self._emb.clear(), self._cls.clear(), self._probs.clear()
        self._rows = self._fresh = 0
        self._mix = None
        self._overruled = self._overrule_pending = None
        with self._lock:
            self._status = {"in_force": False, "model": model_id}
            self._reset_verdicts()

    def set_reference(self, embeddings: np.ndarray, classes: np.ndarray) -> None:
        """The embeddings and predicted classes the model's drift reference holds."""
        self._ref = (np.asarray(embeddings, np.float32), np.asarray(classes, np.int64))

    def reference_mix(self) -> tuple[float, ...] | None:
        """Predicted-class shares of the reference (None until there is one)."""
        if self._ref is None or self._train is None:
            return None
        mix = np.bincount(self._ref[1], minlength=len(self._train)) / max(1, len(self._ref[1]))
        return tuple(round(float(v), 4) for v in mix)

    def observe(self, embeddings: np.ndarray, classes: np.ndarray, probabilities: np.ndarray | None) -> None:
        """Served rows, oldest first; the last ``window`` are kept."""
        if probabilities is None or len(probabilities) != len(classes) or not len(classes):
            return
        self._emb.append(embeddings), self._cls.append(classes), self._probs.append(probabilities)
        self._rows += len(classes)
        self._fresh += len(classes)
        while self._rows - len(self._cls[0]) >= self._window:
            self._rows -= len(self._cls.popleft())
            self._emb.popleft(), self._probs.popleft()

    def _live(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        if self._rows < self._window:
            return None
        n = self._window
        return (np.concatenate(self._emb)[-n:], np.concatenate(self._cls)[-n:], np.concatenate(self._probs)[-n:])

    def add_verdicts(self, rows: list[tuple[str, int, int, int]]) -> None:
        """Feedback on predictions served under the correction (any thread): ``(model_id,
        label, served class, the model's own class)``; rows of another model are ignored."""
        with self._lock:
            if not self._status.get("in_force"):
                return
            v = self._verdicts
            for model_id, label, served, own in rows:
                if model_id != self._model:
                    continue
                v["labels"] += 1
                v["served"] += served == label
                v["own"] += own == label
                v["own_only"] += own == label and served != label
                v["served_only"] += served == label and own != label

    def _reset_verdicts(self) -> None:
        self._verdicts = dict.fromkeys(self._verdicts, 0)

    def _judged_by_feedback(self) -> str | None:
        """Why feedback overrules the correction in force, or None (not enough labels, or not worse)."""
        with self._lock:
            v = dict(self._verdicts)
        if v["labels"] < OVERRULE_LABELS or v["own_only"] <= v["served_only"]:
            return None
        p = sign_test(v["own_only"], v["served_only"])
        if p >= OVERRULE_LEVEL:
            return None
        n = v["labels"]
        return (
            f"on {n} feedback labels the corrected classes were right {v['served'] / n:.1%} of the time and the "
            f"model's own {v['own'] / n:.1%} (sign test p {p:.2g})"
        )

    def take_overrule(self) -> str | None:
        """Why feedback removed the correction, once (the drift check answers the drift again)."""
        why, self._overrule_pending = self._overrule_pending, None
        return why

    @property
    def in_force(self) -> bool:
        return self._mix is not None

    # -- deciding ---------------------------------------------------------------------------------

    def judge(self) -> dict[str, Any]:
        """Whether a change of class mix explains the drift just begun, and if so correct for it.

        Returns what was found: ``answered`` (bool: the correction was made, changed or removed,
        so the drift needs no other answer) and ``reason``, plus the test's figures.
        """
        live = self._live()
        if self._model is None or self._train is None:
            return {"answered": False, "reason": "no model watched"}
        if self._overruled is not None:
            return {"answered": False, "reason": f"feedback overruled the class-mix correction on this model: {self._overruled}"}  # fmt: skip
        if self._ref is None or live is None:
            return {"answered": False, "reason": f"not enough served rows yet (a reference and {self._window} live ones needed)"}  # fmt: skip
        emb, _, probs = live
        # the model's own classes, like the reference's: served ones may carry a correction
        test = class_mix_test(self._ref[0], self._ref[1], emb, probs.argmax(axis=1), len(self._train))
        found = {"p_value": test.p_value, "unweighted_p": test.unweighted_p}
        if not test.explains(self.level):
            return found | {"answered": False, "reason": (
                f"a change of class mix does not explain it (re-weighted p {test.p_value:.2g} < {self.level:g})"
            )}  # fmt: skip
        est = em_priors(probs, self._train)
        shift = total_variation(est.priors, self._train)
        found |= {"priors": est.priors.round(4).tolist(), "shift": shift}
        top = int(np.argmax(est.priors))
        if est.priors[top] >= COLLAPSED_PRIOR > self._train[top]:
            return found | {"answered": False, "reason": (
                f"the answers collapsed onto class {top} ({est.priors[top]:.0%} of the estimated mix): "
                "read as new-looking inputs, not a change of class mix"
            )}  # fmt: skip
        if shift < self.min_shift and self._mix is not None:  # the drift is the mix going back
            self._clear(f"class mix back to training (total variation {shift:.3f})")
            return found | {"answered": True, "reason": (
                f"class mix back to training (total variation {shift:.3f}): the class-mix correction is removed"
            )}  # fmt: skip
        if shift < self.min_shift:
            return found | {"answered": False, "reason": (
                f"the class mix explains it but moved only {shift:.3f} (total variation) from training, under {self.min_shift:g}"
            )}  # fmt: skip
        if not self._apply(est.priors, f"class mix explains the drift (re-weighted p {test.p_value:.2g}, raw {test.unweighted_p:.2g})"):  # fmt: skip
            return found | {"answered": False, "reason": "the model no longer serves"}
        return found | {"answered": True, "reason": (
            f"class mix changed (total variation {shift:.2f} from training; re-weighted p {test.p_value:.2g}): "
            f"logits corrected by log(q / p), most frequent now {self._top(est.priors)}"
        )}  # fmt: skip

    def refresh(self) -> str | None:
        """While a correction is in force: re-estimate from the last window after each fifth of a
        window of new rows (a drift is detected before its window is full, so the first estimate
        still mixes in rows from before it); a message if the correction changed."""
        if self._mix is None or self._train is None:
            return None
        overruled = self._judged_by_feedback()
        if overruled is not None:
            self._overruled = self._overrule_pending = overruled
            self._clear(f"overruled by feedback: {overruled}")
            return f"class-mix correction removed: feedback overruled it ({overruled})"
        if self._fresh < max(1, self._window // 5):
            return None
        live = self._live()
        if live is None:
            return None
        self._fresh = 0
        est = em_priors(live[2], self._train)
        shift = total_variation(est.priors, self._train)
        moved = total_variation(est.priors, self._mix)
        if shift < self.min_shift:
            self._clear(f"class mix back to training (total variation {shift:.3f})")
            return f"class-mix correction removed: the mix is back to training (total variation {shift:.3f})"
        if moved >= self.min_shift / 2:
            self._apply(est.priors, f"class mix moved by {moved:.3f}")
            return (
                f"class-mix correction follows the mix (moved {moved:.2f}; most frequent now {self._top(est.priors)})"
            )
        return None

    def _apply(self, priors: np.ndarray, why: str) -> bool:
        assert self._train is not None and self._model is not None
        offset = np.log(np.clip(priors, 1e-6, None) / self._train)
        if not self.runtime.set_logit_offset(self._model, offset):
            return False
        self._mix = priors
        self._fresh = 0
        logger.info("class-mix correction on %s: %s; priors %s", self._model, why, np.round(priors, 3).tolist())
        entry = {"at": time.time(), "priors": np.round(priors, 4).tolist(), "why": why}
        with self._lock:
            self._history.append(entry)
            if not self._status.get("in_force"):
                self._reset_verdicts()
            since = self._status.get("since") if self._status.get("in_force") else entry["at"]
            self._status = {
                "in_force": True,
                "model": self._model,
                "since": since,
                "priors": entry["priors"],
                "why": why,
            }
        return True

    def _clear(self, why: str) -> None:
        assert self._model is not None
        self.runtime.set_logit_offset(self._model, None)
        self._mix = None
        logger.info("class-mix correction on %s removed: %s", self._model, why)
        with self._lock:
            self._history.append({"at": time.time(), "priors": None, "why": why})
            self._status = {"in_force": False, "model": self._model, "removed_because": why}
            self._reset_verdicts()

    @staticmethod
    def _top(priors: np.ndarray) -> str:
        top = np.argsort(priors)[::-1][:3]
        return ", ".join(f"class {int(k)} {priors[k]:.0%}" for k in top)

    def status(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._status) | {"history": list(self._history)}
            if out.get("in_force"):
                out["feedback"] = dict(self._verdicts)
        return out
