"""The chaos suite (issue 15): real processes under load, faults injected, invariants checked
after quiet. ``python -m bench.chaos`` / ``ordersync chaos``; see bench/README.md."""
