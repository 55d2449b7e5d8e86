"""The test suite as a package, so tests import their shared helpers as ``tests.helpers``."""
