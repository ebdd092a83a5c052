"""Calibration stage: choosing calibration cases and feeding them to each quantizer
(built in the export issue; it imports only `edgederm`)."""
