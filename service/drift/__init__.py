"""The daemon's drift check: what serving saw, the kept references, the periodic check, and
preference drift answered from the cached front.

May import: errors, jobs, state, serving, api, and ``lifelong`` and ``policies``.
Never imports torch, at module level or through what it imports.
The rule is checked by ``tests/test_import_contract.py``.
"""
