"""Benchmarks of batchgen; each module is runnable with ``python -m benchmarks.<name>``."""
