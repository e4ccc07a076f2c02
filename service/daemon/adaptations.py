"""The daemon's side of adaptation: start a pending adaptation once its samples are in, and
when the worker ends, swap to its candidate if it is better, make the adapted supernet and
its front the ones in use, and record why otherwise (:mod:`service.workers.adaptation` keeps
the job and the swap rule).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.data.calibration import domain_calibration, save_calibration
from lifelong.errors import LifelongError
from lifelong.jobs.adapt_request import load_task_data
from lifelong.persist.supernet_versions import find_version, sha_in_use
from lifelong.persist.supernet_versions import set_current as set_current_supernet
from lifelong.search.front import Front
from service.daemon.parts import DaemonParts
from service.serving.task_check import TaskData
from service.state.paths import default_front
from service.workers.adaptation import (
    AdaptationDone,
)

logger = logging.getLogger(__name__)


__all__ = ["AdaptationAnswers"]


def _task_data(result: dict[str, Any]) -> TaskData | None:
    """What an adaptation's candidate is checked on before it serves: the labelled local samples
    the job held out (it is a model of the new data; the service's clean task images can be far
    from it), or, for a label-free answer without labels, nothing: its class mix judged it and
    it is the serving subnet with other BN statistics, behind the parity gate. None (the
    service's task images check it) when the samples cannot be read."""
    path = result.get("task_data")
    if not path:
        return TaskData(None, None, "a label-free answer with no labels of the new data yet: judged on its class mix")
    try:
        x, y = load_task_data(path)
    except LifelongError as exc:
        logger.warning("the adaptation's held-out local samples cannot be read (%s): the task images check it", exc)
        return None
    return TaskData(x, y, f"held-out local samples of the data it was adapted to, {path}")


class AdaptationAnswers(DaemonParts):
    """Adaptations: started once their samples are in, and swapped in or explained when they end."""

    def _adaptation_tick(self) -> None:
        """The domain memory first (:meth:`~service.daemon.drift_answers.DriftAnswers._recall_tick`),
        then start a pending adaptation once its samples are in (on the loop, every ``ADAPT_TICK_S``)."""
        recalled = self._recall_tick()
        if recalled is not None:
            self._event("adapt", recalled)
            return
        a, runtime = self.adaptation, self.runtime
        if a is None or a.pending is None or runtime is None or self.store is None or self.registry is None:
            return
        serving_id = runtime.current_id
        record = None if serving_id is None else self.store.get_model(serving_id)
        path = None
        if serving_id is not None and serving_id in self.registry:
            path = self.registry.path(serving_id)
        feedback = self.feedback
        message = a.tick(
            self.policy,
            record,
            path,
            served=self.drift_feed.counts["samples"],
            recent_images=None if feedback is None else lambda n: feedback.recent_images(n, serving_id),
            model_path=self._registered_path,
        )
        if message is not None:
            self._event("adapt", message)

    def _registered_path(self, model_id: str) -> Path | None:
        """The ONNX file of ``model_id`` if the registry still has it, else None."""
        if self.registry is None or model_id not in self.registry:
            return None
        return self.registry.path(model_id)

    def _on_adaptation_done(self, event: AdaptationDone) -> None:
        """The adaptation worker ended (on the loop): swap if the candidate is better, else say why not."""
        assert self.adaptation is not None and self.drift is not None
        decision, result = self.adaptation.finish(event, self.policy)
        outcome = "kept"
        if result is None:
            outcome = "failed" if "cancelled" not in decision.reason else "cancelled"
        reason = decision.reason
        if decision.swap and result is not None:
            cand = result["candidate"]
            try:
                self._deploy(path=cand["path"], reason=f"adaptation: {decision.reason}", judge="accuracy",
                             task=_task_data(result))  # fmt: skip
            except LifelongError as exc:
                outcome, reason = "kept", f"{decision.reason}; the deploy was refused: {exc}"
            else:
                outcome = "swapped"
                if cand.get("checkpoint"):  # a label-free answer has none: the supernet did not change
                    domain_calibration(self.adaptation.supernet_dir()).unlink(missing_ok=True)
                    self._use_adapted_supernet(cand["checkpoint"], reason, result)
                else:
                    self._keep_domain_images(result)
                for kind in ("data", "label", "accuracy"):
                    self.drift.clear_needed(kind)
        self.adaptation.record_outcome(outcome, reason, result)
        serving = "" if self.runtime is None else f"; {self.runtime.current_id} serves"
        self._event("adapt", f"adaptation {outcome}: {reason}{serving}")

    def _keep_domain_images(self, result: dict[str, Any]) -> None:
        """A label-free answer swapped: later exports calibrate on the images it was made from."""
        assert self.adaptation is not None
        path = result.get("unlabelled")
        try:
            with np.load(str(path), allow_pickle=False) as z:
                x = z["x"][:, None].astype(np.float32) / np.float32(255.0)
            save_calibration(domain_calibration(self.adaptation.supernet_dir()), x, source=f"label-free answer: {path}")
        except (OSError, KeyError, ValueError, LifelongError) as exc:
            self._event("adapt", f"the label-free answer's images could not be kept for later exports: {exc}")

    def _use_adapted_supernet(self, checkpoint: str, reason: str, result: dict[str, Any]) -> None:
        """The adapted supernet is the one the service uses from now on, with its front."""
        assert self.adaptation is not None
        try:
            set_current_supernet(self.adaptation.supernet_dir(), checkpoint, reason=reason)
        except LifelongError as exc:
            self._event("adapt", f"the adapted supernet could not be made current: {exc}")
            return
        sn = result.get("supernet") or {}
        self._install_front(result.get("front"), sn.get("sha256"), sn.get("parent_sha256"))

    def _install_front(self, path: str | None, sha: str | None, parent_sha: str | None) -> None:
        """The adapted supernet's front becomes the cached front, so later policy changes choose
        by accuracy on the local data. Each supernet version's front is kept as
        ``front/versions/SHA.json`` (the replaced one under its parent's hash) for a rollback."""
        target = default_front(self.settings.state_dir)
        if not path:
            self._event(
                "adapt", f"no front was searched on the adapted supernet: {target} still describes the original"
            )
            return
        versions = target.parent / "versions"
        try:
            front = Front.load(path)  # it must read before it replaces anything
            if parent_sha and target.is_file() and not (versions / f"{parent_sha}.json").exists():
                Front.load(target).save(versions / f"{parent_sha}.json")
            if sha:
                front.save(versions / f"{sha}.json")
            front.save(target)
        except (LifelongError, OSError) as exc:
            self._event("adapt", f"the adapted supernet's front was not installed: {exc}")
            return
        self._event("adapt", f"the cached front is now the adapted supernet's: {len(front)} points, from {path}")

    def _follow_serving(self, model_id: str) -> None:
        """After a rollback, the supernet in use and the cached front go back to the version the
        serving model was exported from: an adapted model rolled back takes its supernet with it,
        so later exports and fronts do not build on an adaptation that was undone."""
        assert self.store is not None
        folder = self.settings.state_dir / "supernet"
        record = self.store.get_model(model_id)
        sha = None if record is None else record.checkpoint_sha
        try:
            in_use = sha_in_use(folder)
            if not sha or in_use is None or in_use == sha:
                return
            path = find_version(folder, sha)
            if path is None:
                self._event("rollback", f"{model_id} came from supernet {sha[:12]}, not among the versions in {folder}: the supernet in use stays")  # fmt: skip
                return
            set_current_supernet(folder, path, reason=f"rollback: {model_id} serves again")
        except LifelongError as exc:
            self._event("rollback", f"the supernet in use could not follow {model_id}: {exc}")
            return
        front, said = default_front(self.settings.state_dir).parent / "versions" / f"{sha}.json", ""
        if front.is_file():
            try:
                Front.load(front).save(default_front(self.settings.state_dir))
                said = " with its front"
            except (LifelongError, OSError) as exc:
                said = f"; its front could not be restored: {exc}"
        self._event("rollback", f"the supernet in use is again {path.relative_to(folder)}{said}")
