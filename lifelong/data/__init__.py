"""Datasets as uint8 image arrays: the default task, local samples by reference, the replay
buffer and calibration images.

May import: errors, persist.
Never imports torch, at module level or through what it imports.
The rule is checked by ``tests/test_import_contract.py``.
"""
