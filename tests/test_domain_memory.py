"""The domain memory's watch (service.daemon.drift_answers): asked at set counts of samples
served after a drift, whatever the adaptation is doing, and it drops the adaptation that
answered data now gone. The daemon end to end is in test_adaptation_daemon.py; here the part
runs alone on stand-ins, so each rule is checked without a worker."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from policies import Policy
from policies.schema import AdaptationLimits
from service.daemon.drift_answers import RECALL_AFTER, RECALL_IMAGES, DriftAnswers


class FakeAdaptation:
    def __init__(self, *, pending: bool, running: bool) -> None:
        self.pending, self.running, self.cancelled = (object() if pending else None), running, False

    def cancel_pending(self) -> None:
        self.pending = None

    def cancel(self) -> None:
        self.cancelled = True


class Part(DriftAnswers):
    """The drift answers on stand-ins; ``_recall`` deploys ``match`` from its ``match_at``-th question."""

    def __init__(self, adaptation: FakeAdaptation, match: str | None, match_at: int = 1) -> None:
        self.runtime = SimpleNamespace(current_id="adapted")
        self.drift_feed = SimpleNamespace(counts={"samples": 1000})
        self.feedback = SimpleNamespace(recent_images=lambda n, model: np.zeros((n, 28, 28), np.uint8))
        self.adaptation = adaptation
        self.match, self.match_at, self.asked = match, match_at, []
        self._recall_watch = None
        self.policy = Policy()

    def _recall(self, images: np.ndarray) -> str | None:
        self.asked.append(len(images))
        if self.match is None or len(self.asked) < self.match_at:
            return None
        self.runtime.current_id = self.match
        return f"domain memory: {self.match} serves again"

    def serve(self, n: int) -> str | None:
        self.drift_feed.counts["samples"] += n
        return self._recall_tick()


def test_the_memory_waits_for_its_samples_then_deploys_and_drops_the_adaptation_of_the_gone_data() -> None:
    part = Part(FakeAdaptation(pending=True, running=True), match="original")
    part._watch_recall("adapted")
    part._watch_recall("adapted")  # the same drift seen again at the next check: the watch keeps its start
    assert part.serve(RECALL_AFTER[0] - 1) is None and part.asked == [], "not asked before its samples are served"
    said = part.serve(1)
    assert part.asked == [RECALL_IMAGES] and part.runtime.current_id == "original"
    assert said is not None and "the pending adaptation is dropped" in said and "the running adaptation is cancelled" in said  # fmt: skip
    assert part.adaptation.pending is None and part.adaptation.cancelled
    assert part.serve(RECALL_AFTER[-1]) is None and part.asked == [RECALL_IMAGES], "a recall ends the watch"


def test_a_second_question_later_finds_what_the_first_missed_and_then_the_watch_ends() -> None:
    part = Part(FakeAdaptation(pending=True, running=False), match="original", match_at=2)
    part._watch_recall("adapted")
    assert part.serve(RECALL_AFTER[0]) is None and len(part.asked) == 1
    assert part.adaptation.pending is not None, "no match: the adaptation goes on"
    assert part.serve(RECALL_AFTER[1] - RECALL_AFTER[0] - 1) is None and len(part.asked) == 1
    assert part.serve(1) is not None and len(part.asked) == 2 and part.runtime.current_id == "original"
    nothing = Part(FakeAdaptation(pending=True, running=True), match=None)
    nothing._watch_recall("adapted")
    for _ in range(5):
        nothing.serve(RECALL_AFTER[-1])
    assert len(nothing.asked) == len(RECALL_AFTER) and nothing._recall_watch is None, "asked at most once per count"
    assert not nothing.adaptation.cancelled


def test_a_new_model_ends_the_watch() -> None:
    part = Part(FakeAdaptation(pending=True, running=True), match="original")
    part._watch_recall("adapted")
    part.runtime.current_id = "another"  # another answer deployed first
    assert part.serve(RECALL_AFTER[-1]) is None and part._recall_watch is None and part.asked == []


def test_the_policy_can_turn_the_memory_off() -> None:
    part = Part(FakeAdaptation(pending=True, running=True), match="original")
    part.policy = Policy(adaptation=AdaptationLimits(domain_memory="off"))
    part._watch_recall("adapted")
    assert part.serve(RECALL_AFTER[-1]) is None and part.asked == [] and part.runtime.current_id == "adapted"
