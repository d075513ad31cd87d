"""Benchmarks, run by hand or by `make bench`: they print figures, they are not tests."""
