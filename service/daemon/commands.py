"""The daemon's commands, run on the loop: deploy (a file, uploaded bytes or a registered model,
through the validated swap, with a canary watch against the replaced model's figures), rollback
(by command or by the canary), and retention's prune. Every model change goes through here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from lifelong.errors import LifelongError
from service.daemon.canary import (
    CanaryWatch,
)
from service.daemon.parts import DaemonParts
from service.errors import SettingsError
from service.serving.task_check import TaskData
from service.workers.front_export import prune_job_folders

__all__ = ["Commands"]

logger = logging.getLogger(__name__)


class Commands(DaemonParts):
    """Deploy, rollback and prune: the one path of every model change."""

    def _deploy(
        self,
        model: str | None = None,
        path: str | None = None,
        data: bytes | None = None,
        name: str | None = None,
        reason: str | None = None,
        judge: str = "all",
        task: TaskData | None = None,
    ) -> dict[str, Any]:
        """Deploy through the validated swap.

        ``judge``: what the canary compares with the replaced model: ``"all"`` (errors,
        latency, accuracy), ``"accuracy"`` (errors and accuracy: an adapted model, slower by
        choice within the budget), ``"errors"`` (a preference change: slower or less accurate
        is what was asked for). ``task``: the data the model is deployed for, checked instead of
        the service's task images (an adaptation's candidate, a model of the new data).
        """
        assert self.swapper is not None
        what = model or path or f"upload {name or 'model.onnx'}"
        reason = reason or f"deploy {what}"
        baseline = self._baseline()  # the serving model's figures, before the swap replaces it
        if baseline is not None and judge == "errors":  # slower or less accurate is what was asked for
            baseline = replace(baseline, latency={}, labelled=0, correct=0)
        elif baseline is not None and judge == "accuracy":  # slower within the budget was chosen
            baseline = replace(baseline, latency={})
        state = "active" if baseline is None else "canary"
        try:
            if model is not None:
                result = self.swapper.deploy_model(model, reason=reason, state=state, task=task)
            elif path is not None:
                meta = {"source": f"file {path}"}
                result = self.swapper.deploy_file(path, reason=reason, meta=meta, state=state, task=task)
            elif data is not None:
                meta = {"source": f"upload {name or '-'}"}
                result = self.swapper.deploy_file(data, reason=reason, meta=meta, state=state)
            else:
                raise SettingsError("deploy needs a model id, a path or the model's bytes")
        except LifelongError as exc:
            self._event("deploy-refused", f"{what}: {exc}")
            raise
        out = result.to_dict()
        if result.changed:
            self.live.begin(result.model_id)
            self.canary = None
            watched = ""
            if baseline is not None and result.deployment is not None and result.deployment.state == "canary":
                baseline = self._paired(baseline) if judge == "all" else baseline
                self.canary = CanaryWatch(result.deployment.id, result.model_id, baseline)
                window = self.policy.swap.canary_window
                out["canary"] = {"window": window, "baseline": baseline.model_id}
                watched = f"; canary for {window} requests against {baseline.model_id}"
            self._event("deploy", f"{result.model_id} serves (was {result.previous_id}): {reason}{watched}")
            self.notifier.status(self.status_line())
        return out

    def _rollback(self, reason: str | None = None) -> dict[str, Any]:
        return self._roll_back(reason or "rollback by command", kind="rollback")

    def _roll_back(self, reason: str, *, kind: str) -> dict[str, Any]:
        """The one rollback path, for ``lifelong rollback`` (``kind`` "rollback") and the canary watch."""
        assert self.swapper is not None
        try:
            result = self.swapper.rollback(reason=reason)
        except LifelongError as exc:
            self._event("rollback-refused", f"{reason}: {exc}" if kind != "rollback" else str(exc))
            raise
        self.canary = None
        if result.changed:
            self.live.begin(result.model_id)
        self._event(kind, f"{result.model_id} serves again (was {result.previous_id}): {reason}")
        if result.changed:
            self._follow_serving(result.model_id)
        self.notifier.status(self.status_line())
        return result.to_dict()

    def _prune(self) -> dict[str, Any]:
        assert self.store is not None and self.registry is not None
        keep = self.policy.retention
        removed = self.registry.prune(keep.keep_models, keep.keep_days, store=self.store)
        before = time.time() - keep.keep_days * 86400
        deleted = self.store.delete_older_than(before, ("metrics", "drift_events"))
        busy = {h.job_id for h in self.supervisor.active()} if self.supervisor is not None else set()
        folders = prune_job_folders(
            [self.settings.state_dir / "adapt", self.settings.state_dir / "export"], before, busy
        )
        if removed:
            self._event("retention", f"pruned models {', '.join(removed)}")
        if folders:
            self._event("retention", f"removed {len(folders)} worker job folders older than {keep.keep_days:g} days")
        return {"removed_models": removed, "deleted_rows": deleted, "removed_job_folders": folders}
