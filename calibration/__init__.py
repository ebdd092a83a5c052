"""Calibration stage, installed as `edgederm.calibration`: choosing calibration
cases (`selection`) and feeding them to each quantizer (`adapters`:
nncf.Dataset, onnxruntime's CalibrationDataReader)."""
