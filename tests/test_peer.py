from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from lifelong.deploy.export import onnx_session, run_onnx, subnet_to_onnx
from lifelong.deploy.peer import ort_quantize
from lifelong.errors import ExportError
from lifelong.nn.supernet import Supernet, init_quantizers, recalibrate_bn
from lifelong.space.config import Precision, SearchSpace


@pytest.fixture(scope="module")
def fp32_model(fashion_train) -> tuple[bytes, np.ndarray]:
    torch.manual_seed(0)
    model = Supernet(SearchSpace())
    images = fashion_train.head(600).as_float()
    init_quantizers(model, torch.from_numpy(images[:64]))
    sub = model.get_subnet(model.space.smallest(Precision(32, 32)))
    recalibrate_bn(sub, torch.from_numpy(images[:256]))
    sub.eval()
    return subnet_to_onnx(sub).SerializeToString(), images


def test_ort_ptq_quantizes_every_conv_and_tracks_the_fp32_model(fp32_model, tmp_path) -> None:
    fp, images = fp32_model
    out = tmp_path / "ptq.onnx"
    q = ort_quantize(fp, images[:512], out)
    assert out.read_bytes() == q
    model = onnx.load_from_string(q)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= ops.count("Conv") > 0, ops
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8, "no INT8 weights in the quantized model"
    assert len(q) < 0.6 * len(fp)  # int8 weights; per-channel scales and graph overhead on a tiny model
    ref = run_onnx(onnx_session(fp), images[512:600])[0]
    got = run_onnx(onnx_session(q), images[512:600])[0]
    assert got.shape == ref.shape
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.95


def test_ort_ptq_rejects_bad_calibration_and_bad_models(fp32_model) -> None:
    fp, images = fp32_model
    with pytest.raises(ExportError, match=r"calibration images must be a non-empty \(N, C, H, W\) array"):
        ort_quantize(fp, images[0, 0])
    with pytest.raises(ExportError, match="quantize_static failed"):
        ort_quantize(b"not an onnx model", images[:8])
