"""This device: the latency profile, the latency model and its compiled tables, and the thread
count chosen per model.

May import: errors, progress, persist, space, deploy (its torch-free graph and model format).
Never imports torch, at module level or through what it imports.
The rule is checked by ``tests/test_import_contract.py``.
"""
