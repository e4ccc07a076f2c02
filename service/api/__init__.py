"""The local API: the WSGI app and its HTTP server on the sockets, connection limits, the admin
endpoints, the feedback sink, and the client the CLI uses.

May import: errors, jobs, state, serving, and ``lifelong`` and ``policies``.
Never imports torch, at module level or through what it imports.
The rule is checked by ``tests/test_import_contract.py``.
"""
