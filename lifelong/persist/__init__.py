"""Persisted files: content hashes, versioned JSON and ``.npz`` written atomically, and the
registry of supernet versions on disk.

May import: errors.
Never imports torch, at module level or through what it imports.
The rule is checked by ``tests/test_import_contract.py``.
"""
