"""Calibration stage: choosing calibration cases (`selection`) and feeding them to
each quantizer (`adapters`: nncf.Dataset, onnxruntime's CalibrationDataReader)."""
