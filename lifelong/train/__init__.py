"""Training in torch: the supernet, one subnet fine-tuned alone, adaptation to local data,
and accuracy after BN re-calibration.

May import: errors, progress, persist, space, data, nn.
Imports torch.
The rule is checked by ``tests/test_import_contract.py``.
"""
