"""Benchmarks: ratios measured in one run, never asserted in tests (see README.md)."""
