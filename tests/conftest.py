"""Shared fixtures: a small synthetic release written once per test session, a tiny run trained on it and
its bundles. Only fixtures live here; plain helpers are in tests/helpers.py."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgederm.data.synth import write_synthetic_release
from tests.helpers import fast_configs, train_family_run

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


# One finished run of each other model family, 3 epochs, 64 px (clinical-only: its preset's 128, where its
# lesion selection finds the patches it picks): shared by the family's own tests and the
# INT8 paths every family goes through (tests/test_int8_paths.py).
@pytest.fixture(scope="session")
def clinical_only_run(synthetic_release, tmp_path_factory) -> Path:
    return train_family_run(synthetic_release, tmp_path_factory.mktemp("clinical-only"), "clinical-only-tiny", size=None)


@pytest.fixture(scope="session")
def ssn_run(synthetic_release, tmp_path_factory) -> Path:
    return train_family_run(synthetic_release, tmp_path_factory.mktemp("ssn"), "ssn-tiny")


@pytest.fixture(scope="session")
def jif_run(synthetic_release, tmp_path_factory) -> Path:
    return train_family_run(synthetic_release, tmp_path_factory.mktemp("jif-mmfa"), "jif-mmfa-tiny")
