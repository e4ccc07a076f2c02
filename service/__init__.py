"""The resident daemon and the ``lifelong`` command line. Never imports torch at module level."""
