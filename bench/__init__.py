"""Benchmark harness (not part of the tests): `python -m bench.run`."""
