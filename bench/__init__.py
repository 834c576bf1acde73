"""The throughput benchmark: python -m bench.run [--small]; results in BENCHMARKS.md."""
