"""The domain memory's watch (service.daemon.drift_answers): asked once enough samples were
served after a drift, whatever the adaptation is doing, and it drops the adaptation that
answered data now gone. The daemon end to end is in test_adaptation_daemon.py; here the part
runs alone on stand-ins, so each rule is checked without a worker."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from service.daemon.drift_answers import RECALL_SAMPLES, DriftAnswers


class FakeAdaptation:
    def __init__(self, *, pending: bool, running: bool) -> None:
        self.pending, self.running, self.cancelled = (object() if pending else None), running, False

    def cancel_pending(self) -> None:
        self.pending = None

    def cancel(self) -> None:
        self.cancelled = True


class Part(DriftAnswers):
    """The drift answers on stand-ins; ``_recall`` deploys ``match`` if set."""

    def __init__(self, adaptation: FakeAdaptation, match: str | None) -> None:
        self.runtime = SimpleNamespace(current_id="adapted")
        self.drift_feed = SimpleNamespace(counts={"samples": 1000})
        self.feedback = SimpleNamespace(recent_images=lambda n, model: np.zeros((n, 28, 28), np.uint8))
        self.adaptation = adaptation
        self.match, self.asked = match, []
        self._recall_watch = None

    def _recall(self, images: np.ndarray) -> str | None:
        self.asked.append(len(images))
        if self.match is None:
            return None
        self.runtime.current_id = self.match
        return f"domain memory: {self.match} serves again"


def test_the_memory_waits_for_its_samples_then_deploys_and_drops_the_adaptation_of_the_gone_data() -> None:
    part = Part(FakeAdaptation(pending=True, running=True), match="original")
    part._watch_recall("adapted")
    part._watch_recall("adapted")  # the same drift seen again at the next check: the watch keeps its start
    part.drift_feed.counts["samples"] += RECALL_SAMPLES - 1
    assert part._recall_tick() is None and part.asked == [], "not asked before its samples are served"
    part.drift_feed.counts["samples"] += 1
    said = part._recall_tick()
    assert part.asked == [RECALL_SAMPLES] and part.runtime.current_id == "original"
    assert (
        said is not None
        and "the pending adaptation is dropped" in said
        and "the running adaptation is cancelled" in said
    )
    assert part.adaptation.pending is None and part.adaptation.cancelled
    assert part._recall_tick() is None and part.asked == [RECALL_SAMPLES], "asked once per drift"


def test_no_match_leaves_the_adaptation_alone_and_a_new_model_ends_the_watch() -> None:
    part = Part(FakeAdaptation(pending=True, running=True), match=None)
    part._watch_recall("adapted")
    part.drift_feed.counts["samples"] += RECALL_SAMPLES
    assert part._recall_tick() is None and part.asked == [RECALL_SAMPLES]
    assert part.adaptation.pending is not None and not part.adaptation.cancelled
    part._watch_recall("adapted")
    part.runtime.current_id = "another"  # another answer deployed first
    part.drift_feed.counts["samples"] += RECALL_SAMPLES
    assert part._recall_tick() is None and part._recall_watch is None and part.asked == [RECALL_SAMPLES]
