"""The development scripts (benchmarks/dev) run for minutes to hours on real data, so no test runs them whole.
Their calls into EdgeDerm are checked here against the signatures they call, read from the source (ast):
`int8_methods.py --accuracy-control` once passed seven arguments to a function of six and raised a TypeError
only after its other methods had been built."""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

DEV = Path(__file__).resolve().parents[1] / "benchmarks" / "dev"


def _bindings(tree: ast.Module) -> dict[str, object]:
    """Local name -> the EdgeDerm module or function it is bound to by the script's imports."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgederm") and not node.level:
            module = importlib.import_module(node.module)
            for alias in node.names:
                target = getattr(module, alias.name, None)
                if target is None:          # a submodule imported by name
                    target = importlib.import_module(f"{node.module}.{alias.name}")
                names[alias.asname or alias.name] = target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("edgederm") and alias.asname:
                    names[alias.asname] = importlib.import_module(alias.name)
    return names


def _callee(call: ast.Call, names: dict[str, object]):
    func = call.func
    if isinstance(func, ast.Name):
        return names.get(func.id)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and inspect.ismodule(names.get(func.value.id)):
        return getattr(names[func.value.id], func.attr, None)
    return None


def _calls_that_do_not_bind(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = _bindings(tree)
    wrong = []
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        callee = _callee(call, names)
        if not callable(callee) or any(isinstance(a, ast.Starred) for a in call.args) \
                or any(k.arg is None for k in call.keywords):
            continue
        try:
            signature = inspect.signature(callee)
        except (TypeError, ValueError):      # a builtin without a signature
            continue
        try:
            signature.bind(*call.args, **{k.arg: k.value for k in call.keywords})
        except TypeError as error:
            wrong.append(f"{path.name}:{call.lineno}: {ast.unparse(call.func)}(...): {error}")
    return wrong


@pytest.mark.parametrize("script", sorted(DEV.glob("*.py")), ids=lambda p: p.name)
def test_dev_scripts_call_edgederm_with_arguments_its_signatures_take(script):
    assert _calls_that_do_not_bind(script) == []


def test_the_check_finds_a_call_with_one_argument_too_many(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("from edgederm.export import openvino_export\n"
                      "openvino_export.quantize_for_agreement(1, 2, 3, 4, 5)\n")
    [found] = _calls_that_do_not_bind(script)
    assert found.startswith("broken.py:2: openvino_export.quantize_for_agreement(...): too many positional")


def test_the_methods_table_renders_under_its_name_with_clear_calls_where_recorded(tmp_path):
    """`int8_methods.py --render --name NAME` writes NAME.md from NAME.json; a row that records its confident
    flips shows them (valid and test), a row from before they were recorded shows none."""
    import json
    import subprocess
    import sys
    result = json.loads((DEV.parents[0] / "results" / "int8-methods.json").read_text())
    newer, older = [m for m in result["methods"] if "median_ms" in m and m["runtime"] == "openvino"
                    and m["method"] != "OpenVINO FP32"][:2]
    newer["valid_confident_flips"] = {"diagnosis": 2, "seven_point": 0}
    for decision, clear in (("diagnosis", 1), ("seven_point", 0)):
        newer["test_flips"][decision]["confident_flips"] = clear
    result["methods"] = [newer, older]
    (tmp_path / "real-x.json").write_text(json.dumps(result))
    done = subprocess.run([sys.executable, str(DEV / "int8_methods.py"), "--render", "--results", str(tmp_path),
                           "--name", "real-x"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split(" | ")[0][2:]: line for line in (tmp_path / "real-x.md").read_text().splitlines()
            if line.startswith("| ") and " | openvino | " in line}
    flips = newer["test_flips"]["diagnosis"]
    assert "%; clear calls 2 / 0)" in rows[newer["method"]]
    assert f"({flips['flips']}, 1 clear; at most" in rows[newer["method"]]
    assert "clear" not in rows[older["method"]]
    assert not (tmp_path / "int8-methods.md").exists()
    # a missing or foreign result file: one line, exit 1, no table written
    for name, content in (("missing", None), ("foreign", json.dumps({"rows": []}))):
        if content is not None:
            (tmp_path / f"{name}.json").write_text(content)
        bad = subprocess.run([sys.executable, str(DEV / "int8_methods.py"), "--render", "--results", str(tmp_path),
                              "--name", name], capture_output=True, text=True, timeout=300)
        assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert bad.stderr.startswith(f"error: {tmp_path / name}.json: ") and not (tmp_path / f"{name}.md").exists()
