"""Reading a model file's metadata without the onnx package (lifelong.deploy.model_format.read_metadata):
the serving process registers models and reads these strings, and must not load onnx for them."""

from __future__ import annotations

import onnx
import pytest

from lifelong.deploy.model_format import META_FORMAT, META_SUBNET, read_metadata
from lifelong.deploy.onnx_graph import build_model
from lifelong.device.profile import random_net
from lifelong.space.config import Precision, SearchSpace


def test_the_wire_reader_agrees_with_onnx_on_an_exported_graph_and_on_odd_strings() -> None:
    space = SearchSpace()
    model = build_model(random_net(space, space.smallest(Precision(8, 8))))
    entry = model.metadata_props.add()
    entry.key, entry.value = "note", "ünïcode, commas, and = signs"
    data = model.SerializeToString()
    assert read_metadata(data) == {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    assert META_FORMAT in read_metadata(data) and read_metadata(data)["note"].startswith("ünïcode")
    assert META_SUBNET not in read_metadata(onnx.ModelProto(ir_version=9).SerializeToString())


@pytest.mark.parametrize("data", [b"\x0a\xff\xff\xff\xff\x0f", b"\x72\x05ab", b"\x0f", b"\x80"])
def test_garbage_is_refused_with_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        read_metadata(data)
