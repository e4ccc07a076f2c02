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
    "ort_session",
    "read_metadata",
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


def ort_session(model: bytes | str, threads: int = 1) -> object:
    """An onnxruntime CPU session as every part of the project opens one.

    Threads capped (``threads`` intra-op, one inter-op), spinning off so an idle session does
    not burn the cores other work needs, and :data:`ORT_DISABLED_OPTIMIZERS` turned off.
    ``model`` is the serialized model or a path. onnxruntime is imported here, not at module
    import, so this module stays importable without it.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(
        model, so, providers=["CPUExecutionProvider"], disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS)
    )


_METADATA_FIELD = 14  # ModelProto.metadata_props: repeated StringStringEntryProto {1: key, 2: value}


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        out |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes):  # noqa: ANN202 - a generator of (field number, wire type, value)
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire} of field {field}")
        if i > len(buf):
            raise ValueError(f"field {field} runs past the end")
        yield field, wire, value


def read_metadata(model: bytes) -> dict[str, str]:
    """The metadata properties of an ONNX model file's bytes, read from the protobuf wire
    format without the ``onnx`` package: the serving process registers models and would
    otherwise load ``onnx`` (and ``ml_dtypes``, about 25 MB) only for these strings.

    Raises:
        ValueError: Not a well-formed protobuf message.
    """
    props: dict[str, str] = {}
    for field, wire, value in _fields(model):
        if field == _METADATA_FIELD and wire == 2:
            entry = {f: v for f, w, v in _fields(value) if w == 2}
            props[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
    return props
