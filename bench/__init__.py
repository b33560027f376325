"""Benchmarks: each script prints one JSON object to stdout. See bench/README.md."""
