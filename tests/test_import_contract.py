"""The device boundary as a tested contract (docs/architecture.md).

What runs on the device (edgederm.runtime, edgederm.serve, the installed edgederm.benchmarks) and the numpy
scoring it shares with the workstation (edgederm.scoring) never import the workstation's code: training, the
model definitions, export, the INT8 calibration set, the synthetic release. Not at the top of a module, not
inside a function, not through another module. The walk reads the source (ast), so it sees imports that a
test run would never execute, and `importlib.import_module("...")` with a literal name counts as an import.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Package -> folder, as pyproject.toml's [tool.setuptools.package-dir] installs them.
PACKAGE_DIRS = {"edgederm": REPO / "edgederm", "edgederm.export": REPO / "export",
                "edgederm.calibration": REPO / "calibration", "edgederm.benchmarks": REPO / "benchmarks"}
NOT_INSTALLED = (REPO / "benchmarks" / "dev",)      # development scripts: not part of the package
DEVICE_SIDE = ("edgederm.runtime", "edgederm.serve", "edgederm.benchmarks", "edgederm.scoring")
WORKSTATION_ONLY = ("edgederm.training", "edgederm.models", "edgederm.export", "edgederm.calibration",
                    "edgederm.data.synth", "edgederm.data.render")


def _within(name: str, packages) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def package_modules(package_dirs: dict[str, Path], skip=()) -> dict[str, Path]:
    """Every module of the package: dotted name -> file. The longest folder mapping wins."""
    modules = {}
    for package, folder in sorted(package_dirs.items(), key=lambda kv: len(kv[0])):
        for path in folder.rglob("*.py"):
            if any(path.is_relative_to(s) for s in skip):
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _imported_names(module: str, path: Path) -> set[str]:
    """Every name an import statement anywhere in the file could bind (module or module.attribute)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(str(node.args[0].value))
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (an attribute import resolves to its module; importing a
    submodule also runs its package's __init__)."""
    graph = {}
    for module, path in modules.items():
        edges = set()
        for name in _imported_names(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            while name:
                if name in modules:
                    edges.add(name)
                name = name.rpartition(".")[0]
        graph[module] = edges - {module}
    return graph


def contract_breaches(graph: dict[str, set[str]], sources, forbidden) -> list[str]:
    """Each forbidden module reachable from a source module, with the chain of imports that reaches it."""
    breaches = []
    for start in sorted(m for m in graph if _within(m, sources)):
        parent = {start: None}
        frontier = [start]
        while frontier:
            current = frontier.pop()
            for imported in sorted(graph[current]):
                if imported in parent:
                    continue
                parent[imported] = current
                if _within(imported, forbidden):
                    chain = [imported]
                    while parent[chain[-1]] is not None:
                        chain.append(parent[chain[-1]])
                    breaches.append(" -> ".join(reversed(chain)))
                else:
                    frontier.append(imported)
    return breaches


def test_the_device_side_never_imports_workstation_code():
    modules = package_modules(PACKAGE_DIRS, skip=NOT_INSTALLED)
    assert {"edgederm.runtime.engine", "edgederm.scoring.gate", "edgederm.serve.app",
            "edgederm.benchmarks.bench", "edgederm.models.torch_predictor"} <= set(modules)
    assert not any(m.startswith("edgederm.benchmarks.dev") for m in modules)
    breaches = contract_breaches(import_graph(modules), DEVICE_SIDE, WORKSTATION_ONLY)
    assert not breaches, "the device side imports workstation code:\n" + "\n".join(breaches)


def test_the_walk_finds_a_lazy_import_through_another_module(tmp_path):
    """The checker itself: a function-level import, two modules away, of a forbidden package is a breach."""
    root = tmp_path / "edgederm"
    for name, text in {"__init__.py": "", "runtime/__init__.py": "from . import helper\n",
                       "runtime/helper.py": "def load():\n    from edgederm.tools import build\n",
                       "tools.py": "import importlib\nimportlib.import_module('edgederm.models.io')\n",
                       "models/__init__.py": "", "models/io.py": "",
                       "serve/__init__.py": "from edgederm.runtime.helper import load\n"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    graph = import_graph(package_modules({"edgederm": root}))
    breaches = contract_breaches(graph, ("edgederm.runtime", "edgederm.serve"), ("edgederm.models",))
    assert "edgederm.runtime.helper -> edgederm.tools -> edgederm.models.io" in breaches
    assert "edgederm.serve -> edgederm.runtime.helper -> edgederm.tools -> edgederm.models" in breaches
    assert not contract_breaches(graph, ("edgederm.serve",), ("edgederm.data",))


def test_the_torch_reference_backend_is_a_plugin_the_runtime_finds():
    """The one backend that needs model code lives with the models and is reached through package metadata."""
    from importlib.metadata import entry_points

    from edgederm.models.torch_predictor import TorchPredictor
    found = entry_points(group="edgederm.backends", name="torch")
    assert [ep.load() for ep in found] == [TorchPredictor]
