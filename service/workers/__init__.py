"""Worker processes: the supervisor, the worker's side of its protocol, the export and adaptation
jobs with the daemon's side of each, and the swap rule for an adaptation's candidate.

May import: errors, jobs, state, serving, and ``lifelong`` and ``policies``.
Never imports torch, except ``adapt_worker``, ``export_worker``, ``worker_io`` (worker processes that load it when they run).
The rule is checked by ``tests/test_import_contract.py``.
"""
