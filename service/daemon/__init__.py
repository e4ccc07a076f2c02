"""The resident daemon: its loop, settings, swaps, canary, file watchers, sd_notify, and the
status and history documents.

May import: errors, jobs, state, serving, api, drift, workers, and ``lifelong`` and ``policies``.
Never imports torch, at module level or through what it imports.
The rule is checked by ``tests/test_import_contract.py``.
"""
