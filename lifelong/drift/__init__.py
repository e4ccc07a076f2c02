"""Drift: the detectors, the monitor that runs one of each, signals from outside the inputs,
their statistics, and class-prior estimation.

May import: errors, persist.
Never imports torch, at module level or through what it imports.
The rule is checked by ``tests/test_import_contract.py``.
"""
