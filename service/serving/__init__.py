"""Serving: the onnxruntime runtime with hot swap, the task check every model passes, live
figures, the latency probe, the class-mix correction, and local samples read from the inbox.

May import: errors, jobs, state, and ``lifelong`` and ``policies``.
Never imports torch, at module level or through what it imports.
The rule is checked by ``tests/test_import_contract.py``.
"""
