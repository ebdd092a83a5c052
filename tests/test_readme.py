"""The README's figures are generated from committed result files, never typed:
`python benchmarks/dev/readme_figures.py --check` fails when they differ."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "dev" / "readme_figures.py"


def _check(readme: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme)], capture_output=True,
                          text=True)


def test_readme_figures_match_the_committed_results():
    result = _check(REPO / "README.md")
    assert result.returncode == 0, result.stderr


def test_a_typed_figure_is_caught(tmp_path):
    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- figures:quickstart -->")
    end = readme.index("<!-- /figures:quickstart -->")
    block = readme[start:end]
    changed = block.replace("| reference |", "| pass |", 1)
    assert changed != block
    (tmp_path / "README.md").write_text(readme[:start] + changed + readme[end:])
    result = _check(tmp_path / "README.md")
    assert result.returncode == 1 and "figures differ" in result.stderr
