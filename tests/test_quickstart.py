"""`edgederm quickstart` in a reduced form: the whole pipeline, then a second
run in the same folder that reuses every finished step."""
import json

from typer.testing import CliRunner

from edgederm.cli import app

REDUCED = ["--cases", "40", "--epochs", "2", "--img-size", "64", "--batch-size", "8", "--runs", "3",
           "--max-auc-drop", "100"]   # two epochs learn little: the gate itself is tested in test_runtime


def test_quickstart_runs_end_to_end_and_reuses_finished_steps(tmp_path):
    out = tmp_path / "qs"
    runner = CliRunner()
    first = runner.invoke(app, ["quickstart", "--out", str(out), *REDUCED])
    assert first.exit_code == 0, first.output[-3000:]
    report = json.loads((out / "report" / "report.json").read_text())
    names = [r["name"] for r in report["variants"]]
    assert names == ["tiny-torch-fp32", "tiny-onnx-fp32", "tiny-openvino-fp32", "tiny-openvino-int8",
                     "tiny-jetson-int8@onnxruntime"]
    assert all(r["status"] == "ok" and "accuracy" in r for r in report["variants"])
    assert (out / "report" / "report.html").is_file() and (out / "runs" / "tiny" / "eval-test" / "metrics.md").is_file()
    assert "report: " in first.output and "fastest variant that passes" in first.output
    weights = out / "runs" / "tiny" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    second = runner.invoke(app, ["quickstart", "--out", str(out), *REDUCED])
    assert second.exit_code == 0, second.output[-3000:]
    assert "[1/5] synthetic release: reusing" in second.output and "[2/5] training: reusing" in second.output
    assert second.output.count("reusing") == 2 + 5          # release, run, five bundles
    assert weights.stat().st_mtime_ns == stamp
