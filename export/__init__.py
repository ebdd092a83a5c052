"""Export stage, installed as `edgederm.export`: the target table (`formats`),
ONNX, OpenVINO IR, the Jetson (TensorRT) bundle and the on-device engine build.
It imports `edgederm` and `edgederm.calibration`, and writes bundles through
`edgederm.runtime.bundle`, the device side's format. `engine` imports no torch:
the Jetson builds its engine with it."""
