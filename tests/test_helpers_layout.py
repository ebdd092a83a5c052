"""Where test helpers live: plain helpers in tests/helpers.py, fixtures in tests/conftest.py. No test module
imports from conftest (pytest loads it itself, and importing it a second time as `tests.conftest` makes a
second copy of its module) or from another test module (importing one runs its module-level code and ties
the two files' fates together); conftest.py holds only fixtures, hooks and pytest_plugins."""
import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _forbidden(module: str) -> bool:
    """A module path that a test file must not import: conftest or a test module, under tests or not."""
    parts = module.split(".")
    if parts[0] == "tests":
        parts = parts[1:]
    return bool(parts) and (parts[0] == "conftest" or parts[0].startswith("test_"))


def forbidden_imports(source: str, filename: str = "<probe>") -> list[str]:
    """'file:line: import' for each import, anywhere in the file (inside functions too), of conftest or of a
    test module, in any spelling: `import tests.conftest`, `from tests.test_x import y`, `from tests import
    conftest`, `from conftest import y`, `from .test_x import y`, `from . import conftest`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names = [base] if base and base != "tests" else []
            if base in ("", "tests"):                            # `from tests import x` / `from . import x`
                names += [alias.name for alias in node.names]
        else:
            continue
        found += [f"{filename}:{node.lineno}: {name}" for name in names if _forbidden(name)]
    return found


def test_no_test_file_imports_conftest_or_another_test_module():
    files = sorted(TESTS.glob("*.py"))
    assert TESTS / "helpers.py" in files and TESTS / "conftest.py" in files
    found = [hit for path in files for hit in forbidden_imports(path.read_text(), path.name)]
    assert found == [], "move shared helpers to tests/helpers.py and import them from there:\n" + "\n".join(found)


@pytest.mark.parametrize("line", [
    "from tests.conftest import write_jpeg", "import tests.conftest", "from tests import conftest",
    "from conftest import read_meta", "import conftest", "from .conftest import FAST_TRAINING",
    "from . import conftest", "from tests.test_tensorrt_runtime import FACTS", "import tests.test_report_browser",
    "from tests import test_report_browser", "from test_report_browser import ARGS",
    "from .test_tensorrt_runtime import FakeBuilderTrt",
    "def test_x():\n    from tests.conftest import read_meta",             # inside a function too
])
def test_the_check_sees_every_spelling(line):
    assert len(forbidden_imports(line)) == 1


@pytest.mark.parametrize("line", [
    "from tests.helpers import write_jpeg", "import tests.helpers", "from tests import helpers",
    "from edgederm.testing import x", "import pytest", "from . import helpers", "from tests.helpers import test_x",
])
def test_the_check_lets_helpers_through(line):
    assert forbidden_imports(line) == []


def test_conftest_holds_only_fixtures():
    tree = ast.parse((TESTS / "conftest.py").read_text(), "conftest.py")
    plain = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            fixture = any("fixture" in ast.unparse(d) for d in node.decorator_list)
            if not fixture and not node.name.startswith("pytest_"):      # hooks are fine
                plain.append(f"def {node.name}")
        elif isinstance(node, ast.ClassDef):
            plain.append(f"class {node.name}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            plain += [f"{ast.unparse(t)} =" for t in targets if ast.unparse(t) != "pytest_plugins"]
    assert plain == [], "conftest.py keeps fixtures only; move these to tests/helpers.py: " + ", ".join(plain)
