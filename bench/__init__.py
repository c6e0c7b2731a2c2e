"""Benchmarks: `make bench` runs them all; each writes its own section of BENCHMARKS.md."""
