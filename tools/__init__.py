"""Repository tools importable from the test suite (``tools.stack``: the native stack runner)."""
