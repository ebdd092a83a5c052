"""onnxruntime at export time: the sessions that score ONNX bundles and the INT8 search's Q/DQ graphs.
Torch-free, so it runs in an export worker (export/isolation.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgederm import labels as L


def onnxruntime_session(path: Path) -> ort.InferenceSession:
    """An export-time session (scoring, the INT8 search). Its threads sleep between calls instead of spinning:
    the OpenVINO and Jetson searches run side by side (exporter.export_many), and on a 2-core CPU a spinning
    pool takes the cores the other target computes on (quickstart's two INT8 exports: 144 -> 132 s, the
    same graphs and verdicts). The device runtime (runtime/onnxruntime_backend.py) keeps the default."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: ort.InferenceSession, *inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """N x 24 probabilities (task outputs concatenated in schema order); `inputs` in the graph's input order."""
    names = [i.name for i in session.get_inputs()]
    out = []
    for start in range(0, len(inputs[0]), batch_size):
        feeds = {name: x[start:start + batch_size] for name, x in zip(names, inputs, strict=True)}
        out.append(np.concatenate(session.run(list(L.TASK_KEYS), feeds), axis=1))
    return np.concatenate(out)


def onnx_probabilities(path: Path, inputs: tuple[np.ndarray, ...], log=None) -> np.ndarray:
    """The graph at `path` on `inputs`, in a session of its own: the exporter's parity check, run in a worker
    (export/isolation.py); `log` is the worker's and unused."""
    return run_onnx(onnxruntime_session(path), *inputs)
