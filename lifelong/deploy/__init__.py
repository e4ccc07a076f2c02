"""Deployable models: the ONNX graph of a subnet built from numpy, the model-file contract,
the export behind the parity gate, and onnxruntime's own PTQ as the peer.

May import: errors, persist, space, nn (``export`` only).
Never imports torch, except ``export``.
The rule is checked by ``tests/test_import_contract.py``.
"""
