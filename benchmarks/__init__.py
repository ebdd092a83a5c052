"""Benchmarks: `edgederm bench` (bench, host, report), the quickstart pipeline,
and the scripts that measure this project's speed and accuracy targets."""
