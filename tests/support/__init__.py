"""Helpers shared by the test suite (importable as `support`; see tests/conftest.py)."""
