"""Benchmarks of the canary kit, run from the project folder as modules: `python -m bench.run` (the throughput,
latency, memory and cold-start comparison; `make bench`), `python -m bench.ledger`, `python -m
bench.prediction_metrics_cost`, `python -m bench.observe_cost` and `python -m bench.response_writes`. Not part of the
product.
"""
