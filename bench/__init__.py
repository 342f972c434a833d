"""Benchmark harness: fake cloud, load generator, relays and runners (docs/benchmarks.md)."""
