"""The ``lifelong`` command line, one module per group of commands.

May import: any package of ``service``, and ``lifelong`` and ``policies``.
Never imports torch, at module level or through what it imports.
The rule is checked by ``tests/test_import_contract.py``.
"""
