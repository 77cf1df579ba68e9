"""Benchmarks against the sandbox simulators (``python -m bench.<name>``); see bench/README.md."""
