"""The daemon's policy reloads: an edit of the policy file (the watcher) or ``SIGHUP``: the
new policy in force whole or not at all, the runtime's session options followed, and a
change of what the service aims for answered as preference drift
(:meth:`~service.daemon.drift_answers.DriftAnswers._preference_changed`).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from service.daemon.loop import Reload
from service.daemon.parts import DaemonParts
from service.daemon.watch import PolicyChanged
from service.errors import ModelLoadError

__all__ = ["PolicyReload"]

logger = logging.getLogger(__name__)


class PolicyReload(DaemonParts):
    """Reloads of the policy file, and of the model the registry names on ``SIGHUP``."""

    def _on_policy_changed(self, event: PolicyChanged) -> None:
        self._reload_policy("the policy file changed")

    def _reload(self, event: Reload) -> None:
        assert self.swapper is not None and self.registry is not None and self.runtime is not None
        self.state = "reloading"
        self.notifier.reloading(f"reloading ({event.reason})")
        try:
            self._reload_policy(event.reason)
            if self.registry.current_id() != self.runtime.current_id:
                try:  # another process moved the pointer: serve what it names, validated as any model
                    self.swapper.reload(event.reason)
                    self._event("reload", f"now serving {self.runtime.current_id}, as the registry names")
                except ModelLoadError as exc:
                    self._event("reload-refused", str(exc))
        finally:
            self.state = "ready"
            self.notifier.ready(self.status_line())

    def _reload_policy(self, reason: str) -> None:
        """Apply the policy file whole, or keep the policy in force and show why not."""
        old = self.policy
        policy = self.policy_state.reload()
        if policy is None:
            if self.policy_state.error:
                error = self._first_line(self.policy_state.error)
                self._event("policy-rejected", f"{reason}: {error} (the policy in force stays)")
                self.notifier.status(self.status_line())
            return
        self._event("policy", f"{reason}: policy {policy.name!r} from {self.policy_state.source} in force")
        runtime = self.runtime
        threads, batch = self.settings.threads or policy.target.threads, policy.target.batch
        if runtime is not None and (threads, batch) != (runtime.settings.intra_op_threads, runtime.settings.batch):
            runtime.settings = replace(runtime.settings, intra_op_threads=threads, batch=batch)
            if runtime.current_id is not None and self.swapper is not None:
                try:  # new session options: re-open the model through the validated swap
                    what = f"{threads} onnxruntime threads" if threads else f"the model's own thread count at batch {batch}"  # fmt: skip
                    self.swapper.reload(f"policy: {what}")
                except ModelLoadError as exc:
                    self._event("reload-refused", str(exc))
        self._preference_changed(old, policy)
        self.notifier.status(self.status_line())
