"""The network in torch: bit-sharing quantizers, elastic layers, the supernet and its static
subnets, checkpoints.

May import: errors, persist, space.
Imports torch.
The rule is checked by ``tests/test_import_contract.py``.
"""
