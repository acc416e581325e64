"""Benchmarks: footprint, CPU, latencies, persistence throughput, history at scale, concurrency.

Run them all with `python -m tests.bench` (see `__main__`); they are not part
of the default test run. Every comparable figure is measured against a
baseline in the same run.
"""
