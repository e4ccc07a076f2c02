"""The contract of a deployable model file: what every exported ONNX classifier looks like.

The exporter writes it, the service's runtime checks it before a model may serve, and
nothing else about a model is assumed. A model is an ONNX graph with

- one input ``image``: float32, shape ``(N, 1, 28, 28)`` (``N`` dynamic), pixel values in
  ``[0, 1]``; normalisation happens inside the graph;
- two outputs: ``logits`` float32 ``(N, num_classes)`` and ``embedding`` float32 ``(N, D)``,
  the penultimate features that drift detection watches;
- ``metadata_props`` with the keys of :data:`META_KEYS`: the subnet's canonical string,
  the SHA-256 of the checkpoint it came from, and :data:`MODEL_FORMAT`.

This module needs neither torch nor onnx, so the serving process can import it.
"""

from __future__ import annotations

__all__ = [
    "EMBEDDING_OUTPUT",
    "INPUT_NAME",
    "INPUT_SHAPE",
    "LOGITS_OUTPUT",
    "META_CHECKPOINT",
    "META_FORMAT",
    "META_KEYS",
    "META_SUBNET",
    "MODEL_FORMAT",
    "ORT_DISABLED_OPTIMIZERS",
]

MODEL_FORMAT = 1
"""Version of this contract, stored in every model's metadata under :data:`META_FORMAT`."""

INPUT_NAME = "image"
INPUT_SHAPE = (1, 28, 28)
"""Per-sample input shape (channels, height, width); the batch dimension is dynamic."""

LOGITS_OUTPUT = "logits"
EMBEDDING_OUTPUT = "embedding"

META_SUBNET = "lifelong.subnet"
META_CHECKPOINT = "lifelong.checkpoint_sha256"
META_FORMAT = "lifelong.model_format"
META_KEYS = (META_SUBNET, META_CHECKPOINT, META_FORMAT)

ORT_DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)
"""onnxruntime graph rewrites every session running a model must turn off
(``InferenceSession(..., disabled_optimizers=...)``). ``WeightBiasQuantization`` quantizes
float weights (per tensor, int8) and float biases next to quantized inputs, which changes
what a mixed-precision model computes."""
