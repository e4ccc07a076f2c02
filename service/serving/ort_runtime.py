"""The runtime the daemon serves with: ONNX files in onnxruntime sessions on the CPU.

:class:`OrtRuntime` opens each model's session (threads per model, never spinning), checks the
file against :mod:`lifelong.deploy.model_format` and gives the swap machinery of
:mod:`service.serving.runtime` a ``run`` and a ``release`` (the arena shrunk when idle).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.deploy.model_format import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    INPUT_SHAPE,
    LOGITS_OUTPUT,
    META_FORMAT,
    META_KEYS,
    ORT_DISABLED_OPTIMIZERS,
)
from lifelong.deploy.model_format import MODEL_FORMAT as SUPPORTED_MODEL_FORMAT  # reads better beside a model's own
from lifelong.device.threads import threads_for
from service.errors import ModelLoadError
from service.serving.runtime import AUTO_FALLBACK_THREADS, _LoadedModel, _SwappingRuntime

__all__ = ["OrtRuntime"]

logger = logging.getLogger(__name__)


class OrtRuntime(_SwappingRuntime):
    """Serves ONNX files with onnxruntime on the CPU, with few threads that never spin."""

    def _session_options(self, threads: int | None = None) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or self.settings.intra_op_threads or AUTO_FALLBACK_THREADS
        so.inter_op_num_threads = self.settings.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads burn the cores the gateway's own applications need between requests.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.log_severity_level = 3
        return so

    def _open(self, model_id: str, path: str | None) -> _LoadedModel:
        import onnxruntime as ort

        if path is None or not Path(path).is_file():
            raise ModelLoadError(f"model {model_id!r}: no model file at {path}")

        def open_session(threads: int) -> Any:
            try:
                return ort.InferenceSession(
                    path,
                    self._session_options(threads),
                    providers=["CPUExecutionProvider"],
                    disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS),  # rewrites that change what a model computes
                )
            except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelLoadError(f"model {model_id!r}: onnxruntime cannot load {path}: {first}") from exc

        threads = self.settings.intra_op_threads or AUTO_FALLBACK_THREADS
        session = open_session(threads)
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        if not self.settings.intra_op_threads:  # per model: the count its export timed fastest
            chosen = threads_for(metadata, self.settings.batch)
            if chosen is not None and chosen != threads:
                threads, session = chosen, open_session(chosen)
        problems = _signature_problems(session, metadata)
        if problems:
            raise ModelLoadError(f"model {model_id!r} at {path} breaks the model contract: " + "; ".join(problems))
        names = [LOGITS_OUTPUT, EMBEDDING_OUTPUT]

        def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            logits, embedding = session.run(names, {INPUT_NAME: x})
            return logits, embedding

        return _LoadedModel(model_id, path, run, metadata, threads=threads, release=_arena_release(session, names))


def _arena_release(session: Any, names: list[str]) -> Callable[[], bool]:
    """One batch-1 run of ``session`` that shrinks its CPU memory arena afterwards.

    onnxruntime keeps the arena at the size of the largest batch it ran: after batch-32
    requests on the largest subnet of the search space (FP32), 101 MB resident against 74 MB
    after this run (and ``malloc_trim``), with the arena kept for the requests that follow.
    A batch-1 run of that model takes about 4 ms; it runs only when the service is idle."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    probe = np.zeros((1, *INPUT_SHAPE), np.float32)
    usable = True

    def release() -> bool:
        nonlocal usable
        if not usable:
            return False
        try:
            session.run(names, {INPUT_NAME: probe}, options)
        except Exception as exc:  # noqa: BLE001 - a session without an arena says so; nothing to release then
            usable = False
            logger.info("the serving model's memory arena cannot be shrunk: %s", str(exc).strip().splitlines()[0])
            return False
        return True

    return release


def _signature_problems(session: Any, metadata: Mapping[str, str]) -> list[str]:
    """Every way the session's inputs, outputs and metadata differ from lifelong.deploy.model_format."""
    problems = []
    inputs = session.get_inputs()
    want_in = f"one input {INPUT_NAME!r} float32 (N, {', '.join(map(str, INPUT_SHAPE))})"
    if [i.name for i in inputs] != [INPUT_NAME]:
        problems.append(f"inputs are {[i.name for i in inputs]}; expected {want_in}")
    else:
        (inp,) = inputs
        if inp.type != "tensor(float)":
            problems.append(f"input {INPUT_NAME!r} is {inp.type}; expected tensor(float)")
        if len(inp.shape) != 4 or tuple(inp.shape[1:]) != INPUT_SHAPE:
            problems.append(f"input {INPUT_NAME!r} has shape {inp.shape}; expected {want_in}")
        elif isinstance(inp.shape[0], int):
            problems.append(f"input batch dimension is fixed at {inp.shape[0]}; expected a dynamic one")
    outputs = {o.name: o for o in session.get_outputs()}
    for name in (LOGITS_OUTPUT, EMBEDDING_OUTPUT):
        if name not in outputs:
            problems.append(f"output {name!r} is missing (outputs: {sorted(outputs)})")
        elif outputs[name].type != "tensor(float)" or len(outputs[name].shape) != 2:
            problems.append(f"output {name!r} is {outputs[name].type} {outputs[name].shape}; expected float32 (N, K)")
    missing = [k for k in META_KEYS if k not in metadata]
    if missing:
        problems.append(f"metadata_props lack {missing}; re-export the model with lifelong")
    elif metadata[META_FORMAT] != str(SUPPORTED_MODEL_FORMAT):
        problems.append(
            f"model format {metadata[META_FORMAT]!r}; this service reads format {SUPPORTED_MODEL_FORMAT}: "
            "re-export the model with the lifelong version the service runs"
        )
    return problems
