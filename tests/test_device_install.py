"""The device-side install, for real: EdgeDerm's wheel with its base
dependencies only (numpy, OpenCV, onnxruntime, typer, tqdm) in a clean virtual
environment, then `diagnose` and `bench` on ONNX bundles there, with no torch,
timm, nncf, scikit-learn or matplotlib installed. Also: the stage folders
install under the edgederm namespace, and nothing generic lands in
site-packages.

Building the venv takes about 40 s (pip takes the base dependencies from the
package index through its local cache)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgederm.data.release import read_release

REPO = Path(__file__).resolve().parents[1]
NOT_ON_A_DEVICE = ("torch", "timm", "nncf", "scikit-learn", "matplotlib", "openvino", "onnx")
NOT_IN_SITE_PACKAGES = ("export", "calibration", "benchmarks", "tests")


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    # Outside the checkout: run from the repository root, `python -c` would import its edgederm/ folder.
    kwargs.setdefault("cwd", Path(args[0]).parent)
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory) -> Path:
    """A venv holding the edgederm wheel and its base dependencies; returns its bin folder."""
    root = tmp_path_factory.mktemp("device-install")
    source = root / "source"   # build from a copy: an in-tree build leaves build/ and *.egg-info in the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", "quickstart", "runs", "exports", "reports"))
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", source,
          "-w", root / "wheels"])
    wheel = next((root / "wheels").glob("edgederm-*.whl"))
    _run([sys.executable, "-m", "venv", root / "venv"])
    bin_dir = root / "venv" / "bin"
    _run([bin_dir / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel])
    return bin_dir


def test_base_install_holds_no_training_stack_and_no_generic_packages(device_venv):
    listed = json.loads(_run([device_venv / "python", "-m", "pip", "list", "--format", "json"]).stdout)
    installed = {p["name"].lower() for p in listed}
    assert {"edgederm", "numpy", "opencv-python-headless", "onnxruntime", "typer", "tqdm"} <= installed
    assert not installed & set(NOT_ON_A_DEVICE), installed & set(NOT_ON_A_DEVICE)
    site = Path(_run([device_venv / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .stdout.strip())
    assert not [name for name in NOT_IN_SITE_PACKAGES if (site / name).exists()]
    # The stage folders import from the wheel under the edgederm namespace; dev scripts are not shipped.
    out = _run([device_venv / "python", "-c",
                "import edgederm.export.formats, edgederm.runtime.engine, edgederm.benchmarks.bench, "
                "edgederm.runtime.bundle; print(edgederm.export.formats.__file__); "
                "print(edgederm.runtime.engine.__file__)"]).stdout.split()
    assert out[0].startswith(str(site / "edgederm" / "export")) and out[1].startswith(str(site / "edgederm"))
    assert not (site / "edgederm" / "benchmarks" / "dev").exists()


def test_diagnose_and_bench_run_onnx_bundles_without_torch(device_venv, bundles, synthetic_release, tmp_path):
    case = read_release(synthetic_release).split("test")[0]
    edgederm = device_venv / "edgederm"
    diagnosis = json.loads(_run([edgederm, "diagnose", "--bundle", bundles["onnx-fp32"], "--clinical", case.clinical,
                                 "--derm", case.derm, "--json"]).stdout)
    assert list(diagnosis["tasks"]) == ["DIAG", "PN", "STR", "PIG", "RS", "DaG", "BWV", "VS"]
    assert diagnosis["seven_point"]["score"] >= 0
    assert diagnosis["backend"] == "onnxruntime"
    # bench: the FP32 ONNX bundle as the reference, the Jetson Q/DQ INT8 graph in onnxruntime, accuracy scored.
    report = tmp_path / "report"
    result = subprocess.run([str(edgederm), "bench", "--bundle", str(bundles["onnx-fp32"]),
                             "--bundle", f"{bundles['jetson-int8']}@onnxruntime", "--reference",
                             str(bundles["onnx-fp32"]), "--data", str(synthetic_release), "--warmup", "1",
                             "--runs", "3", "--report", str(report), "--json"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr[-3000:]      # 1: a variant failed the gate, still a report
    rows = {r["name"]: r for r in json.loads(result.stdout)["variants"]}
    assert all(r["status"] == "ok" and r["accuracy"]["avg_auc"] > 0 for r in rows.values()), rows
    assert rows[bundles["onnx-fp32"].name]["verdict"] == "reference"
    page = (report / "report.html").read_text()
    assert "plots need matplotlib" in page       # no matplotlib here: the page says how to get them
    # python -m edgederm is the same command line
    assert "diagnose" in _run([device_venv / "python", "-m", "edgederm", "--help"]).stdout
