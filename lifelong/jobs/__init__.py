"""Jobs a worker process runs: export, label-free and labelled adaptation, and the request
files the daemon hands them. The only package that reads a policy.

May import: any package of ``lifelong``, and ``policies``.
Imports torch.
The rule is checked by ``tests/test_import_contract.py``.
"""
