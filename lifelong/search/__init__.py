"""The search: Pareto machinery, NSGA-II and its baselines, the evaluator of candidates, measured
picks, and the front as a stored product.

May import: errors, progress, persist, space, device, predictor.
Never imports torch, at module level or through what it imports.
The rule is checked by ``tests/test_import_contract.py``.
"""
