"""Benchmark and fault-matrix scripts (run them with ``python bench/NAME.py``)."""
