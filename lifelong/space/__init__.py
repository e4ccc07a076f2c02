"""The search space: subnet configurations and their name grammar, integer codes, and
analytic costs (parameters, MACs, bytes, BitOps).

May import: errors, persist.
Never imports torch, at module level or through what it imports.
The rule is checked by ``tests/test_import_contract.py``.
"""
