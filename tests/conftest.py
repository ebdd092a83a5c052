"""Shared fixtures: a small synthetic release written once per test session,
and helpers that write releases by hand for the reader's error cases."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgederm.data.release import META_COLUMNS
from edgederm.data.synth import write_synthetic_release

# pytester: tests/test_isolation.py runs a small test session of its own to show a crash in a fixture
# fails that fixture's tests only.
pytest_plugins = ("pytester",)


@pytest.fixture(scope="session")
def synthetic_release(tmp_path_factory) -> Path:
    """40 synthetic cases; read-only for tests (copy it to change it)."""
    return write_synthetic_release(tmp_path_factory.mktemp("synth") / "release_v0", cases=40, seed=3, workers=1)


@pytest.fixture
def release_copy(synthetic_release, tmp_path) -> Path:
    """A private copy of the synthetic release that a test may break."""
    return Path(shutil.copytree(synthetic_release, tmp_path / "release_v0"))


def write_jpeg(path: Path, rgb: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if rgb is None:
        rgb = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def read_meta(root: Path) -> list[dict[str, str]]:
    with open(root / "meta" / "meta.csv", newline="") as f:
        return list(csv.DictReader(f))


def write_meta(root: Path, rows: list[dict[str, str]], columns=META_COLUMNS) -> None:
    (root / "meta").mkdir(parents=True, exist_ok=True)
    with open(root / "meta" / "meta.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_indexes(root: Path, splits: dict[str, list[int]]) -> None:
    for split, rows in splits.items():
        (root / "meta" / f"{split}_indexes.csv").write_text("indexes\n" + "".join(f"{i}\n" for i in rows))


# Tiny model at 64 px, batch 8: a few seconds per epoch on the 40-case test release.
FAST_TRAINING = {"epochs": 3, "batch_size": 8, "swa_epochs": 1, "warmup_epochs": 0, "seed": 7, "validate_every": 1}


def fast_configs(**train_overrides):
    from edgederm.training.recipe import resolve_config
    return resolve_config("tiny", model_overrides={"img_size": 64}, train_overrides={**FAST_TRAINING, **train_overrides})


@pytest.fixture(scope="session")
def trained_run(synthetic_release, tmp_path_factory) -> Path:
    """A finished tiny run (3 epochs, 64 px) on the synthetic release."""
    from edgederm.training.trainer import train
    run = tmp_path_factory.mktemp("runs") / "tiny"
    model_cfg, train_cfg = fast_configs()
    train(synthetic_release, run, model_cfg, train_cfg, progress=False)
    return run


@pytest.fixture(scope="session")
def bundles(trained_run, synthetic_release, tmp_path_factory) -> dict[str, Path]:
    """Every target's bundles of the trained run, keyed "onnx-fp32", "openvino-int8", ..."""
    from edgederm.export.exporter import ExportRequest, export
    out = tmp_path_factory.mktemp("exports")
    written = {}
    for target, precisions in (("torch", "fp32"), ("onnx", "fp32"), ("openvino", "fp32,fp16,int8"), ("jetson", "int8")):
        # 40 cases leave 8 in valid: too few to prove a 1-point margin or a 2 % flip rate (one flip is
        # 12.5 %), so the INT8 gate gets wide limits here (tests/test_int8_gate.py tests the gate's choices
        # where it decides).
        margin, flips = (50.0, 100.0) if "int8" in precisions else (None, None)
        for path in export(ExportRequest(run=trained_run, target=target, precisions=precisions,
                                         data=synthetic_release, out=out, max_auc_drop=margin, max_flip_rate=flips),
                           log=lambda m: None):
            written[path.name.split("-", 1)[1]] = path
    return written


def export_for_devices(run: Path, data: Path, out: Path) -> dict[str, Path]:
    """{target: bundle} of a seed-method run for torch (FP32), OpenVINO and the Jetson (INT8, gated with the
    CI-sized release's wide limits, as in `bundles`), after checking that each INT8 bundle holds a graph the
    gate passed and that the Jetson graphs have TensorRT's form."""
    from edgederm.export.exporter import ExportRequest, export
    from edgederm.export.jetson_check import check_graph
    from edgederm.runtime.bundle import read_manifest
    written = {}
    for target, precisions in (("torch", "fp32"), ("openvino", "int8"), ("jetson", "int8")):
        wide = {"max_auc_drop": 50.0, "max_flip_rate": 100.0} if precisions == "int8" else {}
        for path in export(ExportRequest(run=run, target=target, precisions=precisions, data=data, out=out, **wide),
                           log=lambda m: None):
            written[target] = path
    for target in ("openvino", "jetson"):
        gate = read_manifest(written[target])["int8_gate"]
        assert gate["attempts"][gate["chosen"]]["verdict"] == "pass", target
    for graph in read_manifest(written["jetson"])["graphs"]:
        assert check_graph(written["jetson"] / graph) == [], graph
    return written


def bench_against_torch(written: dict[str, Path], data: Path, report: dict) -> None:
    """Bench a seed-method run's OpenVINO and Jetson (onnxruntime) bundles against its torch bundle on the test
    split: every row runs every case, and the reference's AUC is the one `evaluate` reported."""
    from edgederm.benchmarks.bench import run_bench
    from edgederm.evaluation.gate import GateSettings
    bench = run_bench([str(written["openvino"]), f"{written['jetson']}@onnxruntime"], reference=str(written["torch"]),
                      data=data, split="test", batch_sizes=[1], warmup=1, runs=3,
                      gate=GateSettings(max_auc_drop=50.0, max_flip_rate=100.0), photos=[], e2e_runs=1)
    rows = {r["name"]: r for r in bench["variants"]}
    assert all(r["status"] == "ok" and r["accuracy"]["cases"] == report["cases"] for r in rows.values()), rows
    reference = next(r for r in bench["variants"] if r["verdict"] == "reference")
    assert np.isclose(reference["accuracy"]["avg_auc"], report["branches"]["final"]["avg_auc"])
