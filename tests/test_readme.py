"""The figures of README.md and docs/*.md are generated from committed result files, never typed:
`python benchmarks/dev/readme_figures.py --check` fails when any file's blocks differ."""
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "dev" / "readme_figures.py"


def _check(readme: Path) -> subprocess.CompletedProcess:
    """The script's check on README and the docs/ folder beside it."""
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme)], capture_output=True,
                          text=True)


def _copy(tmp_path: Path) -> Path:
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    return tmp_path / "README.md"


def _holding(tmp_path: Path, marker: str) -> Path:
    """The one copied file (README.md or docs/*.md) that holds the block `marker`."""
    found = [p for p in [tmp_path / "README.md", *sorted((tmp_path / "docs").glob("*.md"))] if marker in p.read_text()]
    assert len(found) == 1, (marker, found)
    return found[0]


def _tamper(path: Path, name: str, old: str, new: str) -> None:
    text = path.read_text()
    start, end = text.index(f"<!-- figures:{name} -->"), text.index(f"<!-- /figures:{name} -->")
    block = text[start:end]
    changed = block.replace(old, new, 1)
    assert changed != block
    path.write_text(text[:start] + changed + text[end:])


def test_readme_and_docs_figures_match_the_committed_results():
    result = _check(REPO / "README.md")
    assert result.returncode == 0, result.stderr
    assert "docs/*.md" in result.stdout


def test_the_docs_hold_figure_blocks():
    # The check covers docs/: blocks moved there from the README are still generated.
    assert any("<!-- figures:" in p.read_text() for p in (REPO / "docs").glob("*.md"))


def test_a_typed_figure_is_caught(tmp_path):
    readme = _copy(tmp_path)
    _tamper(_holding(tmp_path, "<!-- figures:quickstart -->"), "quickstart", "| reference |", "| pass |")
    result = _check(readme)
    assert result.returncode == 1 and "figures differ" in result.stderr


def test_a_typed_figure_in_docs_is_caught(tmp_path):
    readme = _copy(tmp_path)
    page = _holding(tmp_path, "<!-- figures:presets -->")
    assert page.parent.name == "docs"
    _tamper(page, "presets", "| 33.06 |", "| 33.07 |")
    result = _check(readme)
    assert result.returncode == 1 and f"{page.name}: figures differ" in result.stderr
    include = "include:benchmarks/results/int8-methods.md"
    page = _holding(tmp_path, f"<!-- figures:{include} -->")
    _tamper(page, include, "| pass", "| fail")
    assert _check(readme).returncode == 1


def test_a_block_missing_everywhere_is_an_error(tmp_path):
    readme = _copy(tmp_path)
    page = _holding(tmp_path, "<!-- figures:preset-table -->")
    text = page.read_text()
    page.write_text(text.replace("<!-- figures:preset-table -->", "").replace("<!-- /figures:preset-table -->", ""))
    result = _check(readme)
    assert result.returncode != 0 and "no <!-- figures:preset-table --> block" in result.stderr


def test_the_quickstart_block_names_how_each_int8_variant_was_quantized():
    """The README's quickstart table and headline say which attempt the export's gate chose for each INT8
    variant and what stayed in float (from the bench report's rows, which copy the manifest's record)."""
    import json

    sys.path.insert(0, str(REPO / "benchmarks" / "dev"))
    try:
        import readme_figures
    finally:
        sys.path.pop(0)
    report = json.loads((REPO / "benchmarks" / "results" / "quickstart.json").read_text())
    for row in report["variants"]:
        if row["name"].endswith("-openvino-int8"):
            row["quantization"] = {"method": "QAT distilled from FP32", "kept_in_float": ["clinical_encoder"]}
            row["float_precision"] = "f32"
        elif "jetson-int8" in row["name"]:
            row["quantization"] = {"method": "4 most sensitive block(s) in float", "kept_in_float": list("abcd")}
    block = readme_figures.quickstart_block(report)
    assert "-openvino-int8 (QAT; clinical encoder fp32) |" in block
    assert "OpenVINO INT8 (QAT; clinical encoder fp32, " in block
    assert "-jetson-int8@onnxruntime (PTQ; 4 block(s) fp32) |" in block
