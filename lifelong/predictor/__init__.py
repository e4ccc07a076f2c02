"""The accuracy predictor: its input features, the MLP in numpy, the evaluated subnets it is
trained on, and its build and report.

May import: errors, progress, persist, space, device (torch, nn, train and data only inside the
collecting functions).
Never imports torch, at module level or through what it imports.
The rule is checked by ``tests/test_import_contract.py``.
"""
