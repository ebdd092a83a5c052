"""Benchmarks, device side: `edgederm bench` (bench, host facts, reports).
Installed as `edgederm.benchmarks`; imports no torch, timm, nncf, scikit-learn
or matplotlib at import time, because a Jetson or a clinic laptop runs it.

The development scripts that measure this project's targets live in
benchmarks/dev/ (run them from a checkout, `python benchmarks/dev/NAME.py`);
they train and export, and are not installed."""
