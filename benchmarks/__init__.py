"""Benchmarks: scripts that measure speed and memory targets and print the figures."""
