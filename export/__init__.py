"""Export stage: ONNX, OpenVINO IR and the Jetson (TensorRT) bundle
(built in the export issue; it imports `edgederm` and `calibration`)."""
