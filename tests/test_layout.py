"""Repository and package layout rules: no large tracked files, and no module
of the device path imports the training stack or the plotting library when
it is imported."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_TRACKED_BYTES = 5 * 1024 * 1024

# Everything `diagnose`, `bench` on a bundle, `engine build` and `serve` import.
DEVICE_MODULES = (
    "edgederm", "edgederm.cli", "edgederm.errors", "edgederm.labels", "edgederm.preprocess",
    "edgederm.checksums", "edgederm.staging", "edgederm.data.release", "edgederm.data.inputs",
    "edgederm.scoring", "edgederm.scoring.metrics", "edgederm.scoring.gate", "edgederm.scoring.calibration",
    "edgederm.scoring.weighted_average", "edgederm.runtime", "edgederm.runtime.bundle", "edgederm.runtime.device",
    "edgederm.runtime.predictor", "edgederm.runtime.prediction", "edgederm.runtime.diagnose",
    "edgederm.runtime.onnxruntime_backend", "edgederm.runtime.tensorrt_backend", "edgederm.runtime.engine",
    "edgederm.benchmarks.bench", "edgederm.benchmarks.host", "edgederm.benchmarks.report", "edgederm.benchmarks.photos",
    "edgederm.serve.app", "edgederm.serve.store", "edgederm.serve.access", "edgederm.serve.server",
    "edgederm.serve.process",
)
HEAVY = ("torch", "timm", "nncf", "sklearn", "matplotlib", "openvino", "onnx")

IMPORT_CHECK = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(" ".join(sorted(m for m in {heavy} if m in sys.modules)))
""".format(heavy=HEAVY)


def test_no_tracked_file_is_over_5_mb():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no tracked files to check")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    large = [(f.decode(), (REPO / f.decode()).stat().st_size) for f in files
             if f and (REPO / f.decode()).is_file() and (REPO / f.decode()).stat().st_size > MAX_TRACKED_BYTES]
    assert not large, f"tracked files over 5 MB: {large}"


@pytest.mark.parametrize("module", DEVICE_MODULES)
def test_device_modules_import_no_heavy_library(module):
    # A fresh interpreter per module: one module's imports must not hide another's.
    result = subprocess.run([sys.executable, "-c", IMPORT_CHECK, module], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"{module} imports {result.stdout.strip()}"


def test_stage_folders_import_under_the_edgederm_namespace():
    import edgederm.benchmarks.bench
    import edgederm.calibration.selection
    import edgederm.export.formats
    assert Path(edgederm.export.formats.__file__).parent == REPO / "export"
    assert Path(edgederm.calibration.selection.__file__).parent == REPO / "calibration"
    assert Path(edgederm.benchmarks.bench.__file__).parent == REPO / "benchmarks"


# Notes that live beside the repository, not in it: a clone has neither, so no file may point at them.
OUTSIDE_NOTES = ("DESIGN" + ".md", "METHODS" + ".md", ".." + "/shared", "seeds" + "/")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".yaml", ".yml", ".js", ".html", ".css", ""}


def test_nothing_points_outside_the_repository():
    """The repository stands alone: no file names the notes kept outside it, and no Markdown link leaves it."""
    import re
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no tracked files to check")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in tracked:
        path = REPO / name
        if path.suffix not in TEXT_SUFFIXES or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        found += [f"{name}: names {note}" for note in OUTSIDE_NOTES if note in text]
        if path.suffix == ".md":
            for target in re.findall(r"\]\(([^)#\s]+)", text):
                if "://" in target or target.startswith("mailto:"):
                    continue
                if not (path.parent / target).resolve().is_relative_to(REPO):
                    found.append(f"{name}: links to {target}, outside the repository")
    assert found == []
