"""Small ONNX classifiers that follow (or deliberately break) :mod:`lifelong.deploy.model_format`.

Built with :mod:`onnx.helper` only, so runtime and API tests need neither torch nor a
trained supernet. A valid model is ``image (N,1,28,28) -> Flatten -> Gemm -> Relu`` (the
``embedding``) ``-> Gemm`` (the ``logits``). ``favour_class`` adds a large bias to one
class so that two models give answers a test can tell apart: whichever model a response
names, its classes must all be that model's favoured class.

The ``broken`` option makes models that must be refused before they serve; ``slow_matmuls``
adds a chain of input-dependent (so not constant-folded) square MatMuls that makes every
run, and so validation and warm-up, take a while.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lifelong.deploy.model_format import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    LOGITS_OUTPUT,
    META_CHECKPOINT,
    META_FORMAT,
    META_SUBNET,
    MODEL_FORMAT,
)

__all__ = ["BROKEN_KINDS", "build_classifier", "write_classifier", "write_corrupt", "write_linear_fashion"]

OPSET = 17
IR_VERSION = 8

BROKEN_KINDS = (
    "wrong_input_name",  # input called "input" instead of "image"
    "wrong_input_shape",  # (N, 784) instead of (N, 1, 28, 28)
    "wrong_input_dtype",  # float64 input
    "fixed_batch",  # batch dimension fixed at 1
    "missing_output",  # no "embedding" output
    "nan",  # logits contain NaN
    "no_metadata",  # metadata_props missing
    "future_format",  # lifelong.deploy.model_format newer than this code reads
)


def build_classifier(
    *,
    num_classes: int = 10,
    hidden: int = 16,
    favour_class: int | None = None,
    seed: int = 0,
    broken: str | None = None,
    slow_matmuls: int = 0,
    slow_size: int = 512,
    subnet: str = "tiny_mlp",
) -> onnx.ModelProto:
    """Build a tiny classifier.

    Args:
        num_classes: Width of ``logits``.
        hidden: Width of ``embedding``.
        favour_class: Class given a +20 logit bias, so the model always predicts it.
        seed: Seed of the random weights.
        broken: One of :data:`BROKEN_KINDS`, or None for a valid model.
        slow_matmuls: Number of ``(slow_size, slow_size)`` MatMuls run on every call.
        slow_size: Side of the square matrices of the slow chain.
        subnet: Value of the ``lifelong.subnet`` metadata key.
    """
    if broken is not None and broken not in BROKEN_KINDS:
        raise ValueError(f"broken={broken!r}; expected one of {BROKEN_KINDS}")
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((784, hidden)) * 0.05).astype(np.float32)
    b1 = np.full(hidden, 0.1, np.float32)
    w2 = (rng.standard_normal((hidden, num_classes)) * 0.1).astype(np.float32)
    b2 = np.zeros(num_classes, np.float32)
    if favour_class is not None:
        b2[favour_class] = 20.0
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]

    in_name = "input" if broken == "wrong_input_name" else INPUT_NAME
    in_type = TensorProto.DOUBLE if broken == "wrong_input_dtype" else TensorProto.FLOAT
    in_shape: list[str | int] = ["N", 1, 28, 28]
    if broken == "wrong_input_shape":
        in_shape = ["N", 784]
    elif broken == "fixed_batch":
        in_shape = [1, 1, 28, 28]
    nodes = []
    x = in_name
    if broken == "wrong_input_dtype":
        nodes.append(helper.make_node("Cast", [x], ["x32"], to=TensorProto.FLOAT))
        x = "x32"
    nodes += [
        helper.make_node("Flatten", [x], ["flat"], axis=1),  # (N, 784)
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["pre"]),  # (N, H)
        helper.make_node("Relu", ["pre"], [EMBEDDING_OUTPUT]),  # (N, H)
        helper.make_node("Gemm", [EMBEDDING_OUTPUT, "w2", "b2"], ["raw_logits"]),  # (N, C)
    ]
    last = "raw_logits"
    if broken == "nan":
        inits.append(numpy_helper.from_array(np.array([np.nan] + [0.0] * (num_classes - 1), np.float32), "nanvec"))
        nodes.append(helper.make_node("Add", [last, "nanvec"], ["with_nan"]))
        last = "with_nan"
    if slow_matmuls:
        last = _add_slow_chain(nodes, inits, x, last, slow_matmuls, slow_size)
    nodes.append(helper.make_node("Identity", [last], [LOGITS_OUTPUT]))

    outputs = [helper.make_tensor_value_info(LOGITS_OUTPUT, TensorProto.FLOAT, ["N", num_classes])]
    if broken != "missing_output":
        outputs.append(helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["N", hidden]))
    graph = helper.make_graph(
        nodes, "tiny_classifier", [helper.make_tensor_value_info(in_name, in_type, in_shape)], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests.tiny_models")
    model.ir_version = IR_VERSION
    if broken != "no_metadata":
        fmt = MODEL_FORMAT + 1 if broken == "future_format" else MODEL_FORMAT
        helper.set_model_props(model, {META_SUBNET: subnet, META_CHECKPOINT: "0" * 64, META_FORMAT: str(fmt)})
    onnx.checker.check_model(model)
    return model


def _add_slow_chain(nodes: list, inits: list, x: str, logits: str, count: int, size: int) -> str:
    """Append ``count`` (size, size) MatMuls fed by the input and added to the logits times 0."""
    inits.append(numpy_helper.from_array(np.array([size, size], np.int64), "slow_shape"))
    inits.append(numpy_helper.from_array(np.array(1.0 / size, np.float32), "slow_scale"))
    inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "slow_zero"))
    nodes.append(helper.make_node("ReduceMean", [x], ["slow_mean"], keepdims=0))  # () depends on the input
    nodes.append(helper.make_node("Expand", ["slow_mean", "slow_shape"], ["slow_0"]))  # (S, S)
    for i in range(count):
        # (M @ M) / S keeps every entry at mean^2 <= 1: finite however long the chain.
        nodes.append(helper.make_node("MatMul", [f"slow_{i}", f"slow_{i}"], [f"slow_mm{i}"]))
        nodes.append(helper.make_node("Mul", [f"slow_mm{i}", "slow_scale"], [f"slow_{i + 1}"]))
    nodes.append(helper.make_node("ReduceMean", [f"slow_{count}"], ["slow_out"], keepdims=0))
    nodes.append(helper.make_node("Mul", ["slow_out", "slow_zero"], ["slow_nothing"]))
    nodes.append(helper.make_node("Add", [logits, "slow_nothing"], ["slow_logits"]))
    return "slow_logits"


def write_classifier(path: str | Path, **kwargs: object) -> Path:
    """Build a classifier with :func:`build_classifier` and save it to ``path``."""
    path = Path(path)
    onnx.save_model(build_classifier(**kwargs), str(path))  # type: ignore[arg-type]
    return path


def write_linear_fashion(path: str | Path, images: np.ndarray, labels: np.ndarray, steps: int = 300) -> Path:
    """A real, if small, Fashion-MNIST classifier: 4 x 4 average pooling (its 49 values are the
    ``embedding``) and a softmax regression on them, fitted to ``images (N, 28, 28) uint8`` by
    full-batch gradient descent (about 80% top-1; a few seconds on 20,000 images)."""
    x = (images.astype(np.float32) / 255).reshape(len(images), 7, 4, 7, 4).mean(axis=(2, 4)).reshape(len(images), 49)
    w, b = np.zeros((49, 10), np.float32), np.zeros(10, np.float32)
    onehot = np.eye(10, dtype=np.float32)[labels]
    for _ in range(steps):
        z = x @ w + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        w -= 2.0 * x.T @ (p - onehot) / len(x)
        b -= 2.0 * (p - onehot).mean(axis=0)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    nodes = [
        helper.make_node("AveragePool", [INPUT_NAME], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),  # (N,1,7,7)
        helper.make_node("Flatten", ["pooled"], [EMBEDDING_OUTPUT], axis=1),  # (N, 49)
        helper.make_node("Gemm", [EMBEDDING_OUTPUT, "w", "b"], [LOGITS_OUTPUT]),  # (N, 10)
    ]
    graph = helper.make_graph(
        nodes,
        "linear_fashion",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, 28, 28])],
        [
            helper.make_tensor_value_info(LOGITS_OUTPUT, TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["N", 49]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests.tiny_models")
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model, {META_SUBNET: "linear_fashion", META_CHECKPOINT: "0" * 64, META_FORMAT: str(MODEL_FORMAT)}
    )
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save_model(model, str(path))
    return path


def write_corrupt(path: str | Path, kind: str = "truncated") -> Path:
    """Write a file that is not a loadable ONNX model: a truncated valid one, or random bytes."""
    path = Path(path)
    if kind == "truncated":
        data = build_classifier().SerializeToString()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        raise ValueError(f"kind={kind!r}; expected 'truncated' or 'garbage'")
    return path
