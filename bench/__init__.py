"""Benchmarks: `make bench` runs every part and prints figures beside a baseline measured in the same run."""
