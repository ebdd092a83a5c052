"""The device side: load a bundle through its verified manifest and predict.

    from edgederm.runtime import load_bundle
    predictor = load_bundle("exports/tiny-openvino-int8", device="CPU")
    prediction = predictor.predict("clinic.jpg", "derm.jpg")

Backends are imported only when a bundle needs them: a Jetson or a clinic
laptop never loads torch. The torch reference backend needs the model code,
which this package never imports (docs/architecture.md, the import contract):
it is a plugin, found through the `edgederm.backends` entry point.
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
        return _plugin_backend(path, backend)(path, manifest)
    from edgederm.runtime.tensorrt_backend import TensorRTPredictor
    return TensorRTPredictor(path, manifest)


def _plugin_backend(path: Path, backend: str) -> type[Predictor]:
    """The Predictor class an installed package registers for `backend` (group `edgederm.backends`)."""
    from importlib.metadata import entry_points
    found = entry_points(group="edgederm.backends", name=backend)
    if not found:
        raise EdgeDermError(f"{path}: no {backend} backend is installed (a {backend} bundle runs on the "
                            "workstation install: pip install 'edgederm[train]')")
    try:
        return next(iter(found)).load()
    except ImportError as e:
        raise EdgeDermError(f"{path}: the {backend} backend cannot load ({e}); a {backend} bundle runs on the "
                            "workstation install: pip install 'edgederm[train]'") from None


__all__ = ["BACKENDS", "DISCLAIMER", "BundleRunError", "Prediction", "Predictor", "load_bundle"]
