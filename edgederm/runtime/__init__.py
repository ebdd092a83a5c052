"""The device side: load a bundle through its verified manifest and predict.

    from edgederm.runtime import load_bundle
    predictor = load_bundle("exports/tiny-openvino-int8", device="CPU")
    prediction = predictor.predict("clinic.jpg", "derm.jpg")

Backends are imported only when a bundle needs them: a Jetson or a clinic
laptop never loads torch unless it runs a torch bundle.
"""
from __future__ import annotations

from pathlib import Path

from edgederm.errors import EdgeDermError
from edgederm.runtime.bundle import read_manifest
from edgederm.runtime.prediction import DISCLAIMER, Prediction
from edgederm.runtime.predictor import BundleRunError, Predictor

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")


def load_bundle(path: str | Path, device: str = "CPU", backend: str | None = None) -> Predictor:
    """A predictor for a bundle, after its files were checked against the manifest.

    `backend` overrides the bundle's own: a jetson bundle's ONNX graphs also run
    in onnxruntime (`backend="onnxruntime"`), which is how they are scored off the device.
    """
    path = Path(path)
    manifest = read_manifest(path)
    backend = backend or manifest["backend"]
    if backend not in BACKENDS:
        raise EdgeDermError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "onnxruntime":
        from edgederm.runtime.onnxruntime_backend import OnnxRuntimePredictor
        onnx_graphs = [g for g in manifest["graphs"] if g.endswith(".onnx")]
        if not onnx_graphs:
            raise EdgeDermError(f"{path}: a {manifest['target']} bundle has no ONNX graph for onnxruntime")
        return OnnxRuntimePredictor(path, manifest, onnx_graphs[0])
    if backend != manifest["backend"]:
        raise EdgeDermError(f"{path}: a {manifest['target']} bundle cannot run on {backend}")
    if backend == "openvino":
        from edgederm.runtime.openvino_backend import OpenVinoPredictor
        return OpenVinoPredictor(path, manifest, device)
    if backend == "torch":
        from edgederm.runtime.torch_backend import TorchPredictor
        return TorchPredictor(path, manifest)
    from edgederm.runtime.tensorrt_backend import TensorRTPredictor
    return TensorRTPredictor(path, manifest)


__all__ = ["BACKENDS", "DISCLAIMER", "BundleRunError", "Prediction", "Predictor", "load_bundle"]
