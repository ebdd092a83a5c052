"""The command line, driven through typer's CliRunner: exit codes, output, files."""
import json

from typer.testing import CliRunner

from edgederm.cli import app
from tests.helpers import read_meta, write_meta

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "data" in result.output and "model" in result.output


def test_synth_then_check(tmp_path):
    out = tmp_path / "synth"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--cases", "12", "--seed", "1", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (out / "meta" / "meta.csv").is_file()
    result = runner.invoke(app, ["data", "check", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["problems"] == []
    assert sum(s["cases"] for s in report["splits"].values()) == 12
    assert sum(report["splits"]["train"]["counts"]["DIAG"].values()) == report["splits"]["train"]["cases"]
    # refuses to overwrite, leaves the release intact
    before = (out / "meta" / "meta.csv").read_bytes()
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--cases", "12"])
    assert result.exit_code == 1 and "already exists" in result.output
    assert (out / "meta" / "meta.csv").read_bytes() == before


def test_check_reports_every_problem_and_exits_non_zero(release_copy):
    rows = read_meta(release_copy)
    rows[0]["streaks"] = "wavy"
    rows[1]["vascular_structures"] = "spiral"
    write_meta(release_copy, rows)
    result = runner.invoke(app, ["data", "check", str(release_copy), "--no-images"])
    assert result.exit_code == 1
    assert "'wavy'" in result.output and "'spiral'" in result.output
    assert "2 problem(s)" in result.output
    assert "DIAG  NEV" in result.output   # the counts table is still printed


def test_check_on_a_folder_that_is_not_a_release(tmp_path):
    result = runner.invoke(app, ["data", "check", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "meta.csv: file not found" in result.output


def test_model_summary_json_and_table():
    result = runner.invoke(app, ["model", "summary", "--preset", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    total = summary["total"]
    assert abs(sum(r["params_m"] for r in summary["rows"]) - total["params_m"]) < 1e-6
    assert total["gflops"] > 0 and summary["config"]["img_size"] == 128
    assert summary["paper"] is None                       # tiny is not one of the paper's rows
    table = runner.invoke(app, ["model", "summary", "--preset", "tiny"])
    assert "dermoscopy encoder" in table.output and "total" in table.output


def test_model_summary_shows_the_papers_count_beside_a_paper_row():
    result = runner.invoke(app, ["model", "summary", "--preset", "aff-cat"])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("the paper (aff-cat)") and "32.48" in last and "(-0.0 %)" in last


def test_model_summary_bad_preset_is_one_line():
    result = runner.invoke(app, ["model", "summary", "--preset", "huge"])
    assert result.exit_code == 1
    from edgederm.presets import preset_names
    assert result.output.strip() == f"error: unknown preset 'huge' (choose from {', '.join(preset_names())})"
    assert "clinical-only" in preset_names() and "tiny" in preset_names()


def test_data_check_does_not_import_torch(synthetic_release):
    # `data check` runs on a Jetson or clinic laptop: numpy and OpenCV only.
    import subprocess
    import sys
    code = ("import sys\nfrom edgederm.cli import app\n"
            "try:\n    app(['data', 'check', sys.argv[1], '--json'])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "heavy = sorted(m for m in ('torch', 'timm', 'nncf', 'openvino') if m in sys.modules)\n"
            "print('HEAVY', heavy, file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", code, str(synthetic_release)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stderr


def test_train_errors_are_one_line(synthetic_release, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(synthetic_release), "--out", str(tmp_path / "r"),
                                 "--preset", "huge"])
    assert result.exit_code == 1 and result.output.startswith("error: unknown preset 'huge'")
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"),
                                 "--preset", "tiny", "--epochs", "1", "--swa-epochs", "0", "--warmup-epochs", "0"])
    assert result.exit_code == 1 and "nowhere: not a directory" in result.output
    assert not (tmp_path / "r").exists()
    result = runner.invoke(app, ["train", "--data", str(synthetic_release), "--out", str(tmp_path / "r"),
                                 "--preset", "tiny", "--epochs", "2", "--swa-epochs", "3"])
    assert result.exit_code == 1 and "swa_epochs must be between 0 and epochs (2)" in result.output


def test_torchrun_relaunch_keeps_every_flag():
    from edgederm.cli import _as_flags
    flags = _as_flags({"data": "d", "fusion_stages": "-2,-1", "augment": False, "resume": False, "lr": 0.001,
                       "epochs": None, "quiet": True})
    assert flags == ["--data=d", "--fusion-stages=-2,-1", "--no-augment", "--lr=0.001", "--quiet"]


def test_every_train_option_reaches_the_trainer_or_the_relaunch():
    """`train`'s options are gathered into explicit objects (no locals()): each option has its field, so a new
    option cannot be dropped silently from the torchrun relaunch."""
    import inspect
    from dataclasses import fields

    from edgederm.cli import ModelFlags, RecipeFlags, train_command
    from edgederm.training.recipe import TrainConfig
    options = set(inspect.signature(inspect.unwrap(train_command)).parameters)
    gathered = {f.name for f in fields(ModelFlags)} | {f.name for f in fields(RecipeFlags)}
    assert options - gathered == {"data", "out", "preset", "config", "resume", "quiet", "nproc"}
    assert gathered <= options
    assert {f.name for f in fields(RecipeFlags)} <= {f.name for f in fields(TrainConfig)}
