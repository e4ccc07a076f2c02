"""The one path every model change takes: deploy a file, deploy a registered model, roll back.

Every change runs the same four steps, each finished (and durable) before the next:

1. ``Registry.add``: the file is copied into a temporary folder, fsynced and renamed into
   place, so a model is visible in the registry only when complete (new files only);
2. ``Store.record_model``: the store knows the model (idempotent);
3. ``Runtime.swap``: the model is loaded, its signature checked, validated on a probe batch
   plus the recent local samples (and a parity sample when one is given), warmed up, and
   only then swapped in by one reference change. A failure leaves the old model serving and
   is recorded as a ``failed`` deployment with its reason;
4. ``Registry.deploy``: a ``pending`` deployment row, the atomic pointer switch (the commit
   point), the row made ``active``. If this step fails, the runtime is swapped back to the
   model the registry still names, so what serves and what is committed never disagree for
   longer than the call.

A crash between 3 and 4 therefore restarts on the old model (the pointer never moved), and a
crash inside 4 is settled by :meth:`~service.state.registry.Registry.reconcile` at the next start.

Rollback deploys the store's rollback target (:meth:`~service.state.store.Store.previous_model`)
through steps 3-4 and marks the deployment it leaves ``rolled-back``, so a second rollback
goes one model further back instead of flip-flopping. A rollback's deployment is ``active``
at once: it returns to a model that served before.

A parity sample is optional: next to ``model.onnx`` a ``model.parity.npz`` with ``x`` (the
inputs) and ``logits`` (and optionally ``embedding``), the outputs the model must reproduce,
for instance the exporter's torch outputs.

:class:`Swapper` is not thread-safe on purpose: the daemon calls it from its one loop, which
is what serialises every change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.deploy.model_format import EMBEDDING_OUTPUT, LOGITS_OUTPUT
from service.errors import ModelLoadError, RecordNotFound, RegistryError
from service.serving.runtime import Runtime
from service.serving.task_check import TaskData
from service.state.registry import Registry
from service.state.store import Deployment, Store

__all__ = ["PARITY_SUFFIX", "SwapResult", "Swapper", "load_parity"]

logger = logging.getLogger(__name__)

PARITY_SUFFIX = ".parity.npz"

SampleSource = Callable[[], np.ndarray | None]
PausePoint = Callable[[str], None]


@dataclass(frozen=True)
class SwapResult:
    """What a deploy or rollback did; ``changed`` is False when the model already served."""

    model_id: str
    previous_id: str | None
    changed: bool
    reason: str
    deployment: Deployment | None = None
    load_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["deployment"] = None if self.deployment is None else asdict(self.deployment)
        return out


def load_parity(path: str | PathLike[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read a parity sample: ``x`` and the expected ``logits`` (and ``embedding``).

    Raises:
        ModelLoadError: the file is unreadable or lacks ``x`` and ``logits``.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ModelLoadError(f"parity sample {path} is not a readable .npz: {exc}") from exc
    if "x" not in arrays or LOGITS_OUTPUT not in arrays:
        raise ModelLoadError(
            f"parity sample {path} holds {sorted(arrays)}; expected 'x' and '{LOGITS_OUTPUT}' (and optionally "
            f"'{EMBEDDING_OUTPUT}')"
        )
    expected = {k: arrays[k] for k in (LOGITS_OUTPUT, EMBEDDING_OUTPUT) if k in arrays}
    return arrays["x"], expected


def _no_pause(point: str) -> None:
    return None


class Swapper:
    """Deploys and rolls back models through the one validated path.

    Args:
        store: The state database (deployment history, rollback target).
        registry: The models on disk and the current pointer.
        runtime: What serves.
        samples: Recent local inputs ``(N, 1, 28, 28)`` (or None) to validate and warm up on.
        pause: Test hook called with ``"swap"`` between the runtime swap and the commit.
    """

    def __init__(
        self,
        store: Store,
        registry: Registry,
        runtime: Runtime,
        *,
        samples: SampleSource | None = None,
        pause: PausePoint = _no_pause,
    ) -> None:
        self.store, self.registry, self.runtime = store, registry, runtime
        self._samples = samples or (lambda: None)
        self._pause = pause

    # -- entry points ------------------------------------------------------------------------

    def deploy_file(
        self,
        source: bytes | str | PathLike[str],
        *,
        reason: str,
        meta: Mapping[str, Any] | None = None,
        parity: tuple[np.ndarray, Mapping[str, np.ndarray]] | None = None,
        state: str = "active",
        task: TaskData | None = None,
    ) -> SwapResult:
        """Add a model file (or its bytes) to the registry and deploy it.

        A path's sibling ``NAME.parity.npz`` is used as the parity sample unless ``parity``
        is given. ``state`` is the deployment's once committed, as for :meth:`deploy_model`;
        ``task``, the data the model is deployed for, replaces the service's task images in
        its check (an adaptation's candidate).

        Raises:
            ModelLoadError: the file is not a readable ONNX model, or it fails to load or
                validate (422); the old model serves on.
        """
        if not isinstance(source, bytes | bytearray):
            path = Path(source)
            if not path.is_file():
                raise ModelLoadError(f"no model file at {path}; expected an ONNX file the daemon can read")
            sibling = path.with_name(path.name.removesuffix(".onnx") + PARITY_SUFFIX)
            if parity is None and sibling.is_file():
                parity = load_parity(sibling)
        known = {r.id for r in self.registry.list()}
        try:
            record = self.registry.add(source, meta)
        except RegistryError as exc:
            what = str(meta.get("source", "the model")) if meta else "the model"
            detail, marker = str(exc), " is not a readable ONNX model: "
            if marker in detail:  # the registry names its temporary copy; name what the caller sent
                detail = (
                    f"not a readable ONNX model ({detail.split(marker, 1)[1]}); "
                    "expected an ONNX file such as `lifelong export` writes"
                )
            raise ModelLoadError(f"{what}: {detail}") from exc
        self.store.record_model(record)
        try:
            return self.deploy_model(record.id, reason=reason, parity=parity, state=state, task=task)
        except ModelLoadError:
            if record.id not in known and self.registry.discard(record.id, self.store):
                logger.warning("model %s was refused and removed from the registry", record.id)
            raise

    def deploy_model(
        self,
        model_id: str,
        *,
        reason: str,
        parity: tuple[np.ndarray, Mapping[str, np.ndarray]] | None = None,
        state: str = "active",
        task: TaskData | None = None,
    ) -> SwapResult:
        """Serve and commit a model already in the registry.

        ``state`` is the committed deployment's: ``"active"``, or ``"canary"`` when the
        caller watches the new model before promoting it (:mod:`service.daemon.canary`).

        Raises:
            RecordNotFound: no such model in the registry (404).
            ModelLoadError: it fails to load or validate; the old model serves on.
        """
        if state not in ("canary", "active"):
            raise ValueError(f"a deployment goes 'canary' or 'active', got {state!r}")
        if model_id not in self.registry:
            raise RecordNotFound(f"no model {model_id!r} in the registry; `lifelong history` lists the deployed ones")
        live = self.store.current_deployment()
        previous = self.runtime.current_id
        if previous == model_id and self.registry.current_id() == model_id:
            logger.info("model %s already serves; nothing to deploy", model_id)
            return SwapResult(model_id, previous, False, reason, live)
        if self.store.get_model(model_id) is None:
            self.store.record_model(self.registry.get(model_id))
        load_ms = self._swap_runtime(model_id, reason, parity, task=task)
        self._pause("swap")
        try:
            deployment = self.registry.deploy(self.store, model_id, reason=reason, state=state)
        except Exception:
            self._restore_committed(model_id)
            raise
        logger.info("deployed %s (was %s): %s", model_id, previous, reason)
        return SwapResult(model_id, previous, True, reason, deployment, load_ms)

    def rollback(self, *, reason: str = "rollback") -> SwapResult:
        """Deploy the rollback target and mark the deployment it leaves ``rolled-back``.

        Raises:
            RecordNotFound: there is no earlier model to go back to (404).
            ModelLoadError: the target fails to load; the current model serves on.
        """
        target = self.store.previous_model()
        live = self.store.current_deployment()
        if target is None:
            serving = live.model_id if live else self.runtime.current_id
            now = f"{serving} serves" if serving else "no model serves yet"
            raise RecordNotFound(f"no earlier model to roll back to ({now}); `lifelong history` lists the deployments")
        result = self.deploy_model(target, reason=reason)
        if live is not None and live.model_id != target:
            self.store.update_deployment(live.id, "rolled-back", f"rolled back to {target}: {reason}")
        return result

    def serve_current(self) -> str | None:
        """At start: serve the registry's current model, else fall back to the rollback target.

        Returns:
            The id serving, or None when nothing is deployed (or nothing loads).
        """
        current = self.registry.current_id()
        if current is None:
            return None
        try:
            self.registry.verify(current)
            self._swap_runtime(current, "start", None, record_failure=False)
            return current
        except (ModelLoadError, RegistryError) as exc:
            logger.error("the current model %s does not load: %s", current, exc)
            live = self.store.current_deployment()
            if live is not None and live.model_id == current:
                self.store.update_deployment(live.id, "failed", f"failed to load at start: {exc}")
        target = self.store.previous_model()
        if target is None or target == current:
            logger.error("no earlier model to fall back to; serving nothing until a deploy")
            return None
        try:
            self.deploy_model(target, reason=f"start: the current model {current} failed to load")
        except (ModelLoadError, RegistryError, RecordNotFound) as exc:
            logger.error("the fallback model %s does not load either: %s", target, exc)
            return None
        return target

    def reload(self, reason: str) -> str | None:
        """Re-open the model the registry names (new runtime settings, or a pointer moved by
        another process) through the validated swap; returns the id serving."""
        current = self.registry.current_id()
        if current is None:
            return self.runtime.current_id
        self._swap_runtime(current, reason, None, record_failure=False)
        return current

    # -- steps -------------------------------------------------------------------------------

    def _swap_runtime(
        self,
        model_id: str,
        reason: str,
        parity: tuple[np.ndarray, Mapping[str, np.ndarray]] | None,
        *,
        record_failure: bool = True,
        task: TaskData | None = None,
    ) -> float:
        sample, expected = (parity[0], dict(parity[1])) if parity is not None else (self._samples(), None)
        start = time.perf_counter()
        try:
            self.runtime.swap(model_id, self.registry.path(model_id), sample, expected_outputs=expected, task=task)
        except ModelLoadError as exc:
            if record_failure:
                self.store.record_deployment(model_id, reason=reason, state="failed", detail=str(exc))
            raise
        return (time.perf_counter() - start) * 1e3

    def _restore_committed(self, attempted: str) -> None:
        """After a failed commit: serve again what the registry's pointer names."""
        committed = self.registry.current_id()
        if committed is None or committed == attempted or committed not in self.registry:
            return
        try:
            self.runtime.swap(committed, self.registry.path(committed), self._samples())
            logger.warning("commit of %s failed; %s serves again", attempted, committed)
        except ModelLoadError:
            logger.exception("commit of %s failed and %s does not load again", attempted, committed)
