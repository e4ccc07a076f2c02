"""The resident daemon and the ``lifelong`` command line, in layers, each a sub-package whose
docstring says what it may import: ``state`` < ``serving`` < ``api`` < ``drift``, ``workers``
< ``daemon`` < ``demo`` < ``cli``; ``errors`` and ``jobs`` (the periodic-job scheduler) sit
below them all. Never imports torch at module level: only the worker processes load it.
"""
