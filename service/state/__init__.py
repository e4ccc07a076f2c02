"""The service's state on disk: the SQLite store and its migrations, the model registry, the
state-folder layout, and the policy in force.

May import: errors, jobs, and ``lifelong`` and ``policies``.
Never imports torch, at module level or through what it imports.
The rule is checked by ``tests/test_import_contract.py``.
"""
