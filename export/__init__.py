"""Export stage: the target table (`formats`), ONNX, OpenVINO IR, the Jetson
(TensorRT) bundle and engine build, and verified bundle manifests (`bundle`).
It imports `edgederm` and `calibration`; `bundle` and `engine` import no torch,
because the device reads bundles and builds engines with them."""
