"""``lifelong demo``: its preparation, its initial choice, its daemon, its traffic and its report.

May import: errors, jobs, state, serving, api, and ``lifelong`` and ``policies``.
Never imports torch, at module level or through what it imports.
The rule is checked by ``tests/test_import_contract.py``.
"""
