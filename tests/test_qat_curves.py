"""benchmarks/dev/qat_curves.py on the session's trained tiny run: per setting, the student's distance from its
teacher before fine-tuning and after each epoch, as JSON, a table and a figure drawn from the JSON alone."""
import json
import subprocess
import sys
from pathlib import Path

from edgederm.data.release import read_release

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dev" / "qat_curves.py"


def _curves(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=900)


def test_curves_record_the_start_and_every_epoch_per_setting(trained_run, synthetic_release, tmp_path):
    out = tmp_path / "results" / "curves"
    done = _curves("--run", trained_run, "--data", synthetic_release, "--out", out,
                   "--setting", "everywhere=overflow_fix:enable,epochs:2,batch_size:4,lr:1e-5",
                   "--setting", "first layer=overflow_fix:first_layer_only,epochs:1,batch_size:4,augment:true",
                   "--setting", "by this CPU=overflow_fix:auto,epochs:1,batch_size:4,mix_alpha:1.0,signed:false")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.with_suffix(".json").read_text())
    first, second, by_cpu = result["rows"]
    assert first["label"] == "everywhere" and first["settings"]["overflow_fix"] == "enable"
    assert first["settings"]["lr"] == 1e-5 and second["settings"]["augment"] is True
    assert second["settings"]["overflow_fix"] == "first_layer_only" and "first_layer_only" in second["quantizers"]
    assert by_cpu["settings"]["overflow_fix"] == "auto" and "(auto, by this CPU)" in by_cpu["quantizers"]
    assert by_cpu["settings"]["mix_alpha"] == 1.0 and "unsigned where never negative" in by_cpu["quantizers"]
    assert "every quantizer signed" in first["quantizers"]
    assert [e["epoch"] for e in first["epochs"]] == [1, 2] and len(second["epochs"]) == 1
    for row in result["rows"]:
        assert {"train", "valid"} == set(row["start"]) < set(row["epochs"][-1])
        assert row["start"]["train"]["mean_abs_dp"] > 0          # quantized: not the teacher
    # 7-bit weights everywhere start farther from the teacher than on the first layer only
    assert first["start"]["train"]["mean_abs_dp"] > second["start"]["train"]["mean_abs_dp"]
    # every student judged by the export's gate on every valid case
    valid_cases = len(read_release(synthetic_release).split("valid"))
    for row in result["rows"]:
        gate = row["gate"]
        assert gate["cases"] == valid_cases and gate["verdict"] in ("pass", "fail")
        assert 0 <= gate["diagnosis_flips"] <= valid_cases and 0 <= gate["seven_point_flips"] <= valid_cases
        assert gate["mean_abs_dp"] > 0 and gate["mean_abs_score_difference"] >= 0
        assert (gate["verdict"] == "pass") == (not gate["reasons"])
        for decision, count in (("diagnosis", gate["diagnosis_flips"]), ("seven_point", gate["seven_point_flips"])):
            margins = [c["margin"] for c in gate["flipped"][decision]]
            assert len(margins) == count and margins == sorted(margins) and min(margins, default=0) >= 0
            assert sum(m > 0.1 for m in margins) == gate["confident_flips"][decision]
    assert 0 <= result["near_ties"]["diagnosis"] <= valid_cases
    table = out.with_suffix(".md").read_text()
    curves, gated = table.split("Each trained student judged by the export's gate")
    assert "| everywhere | 0 |" in curves and curves.count("\n| ") == 1 + 3 + 2 + 2    # header, epochs 0-2, 0-1, 0-1
    gated, margins = gated.split("The FP32 margin of every decision each student changed")
    assert f"on all {valid_cases} valid cases" in gated and gated.count("\n| ") == 1 + 3
    assert margins.count("\n| ") == 1 + 3 and "| everywhere | " in margins
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the figure and table again from the JSON alone
    png.unlink()
    again = _curves("--plot", out.with_suffix(".json"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert png.is_file() and out.with_suffix(".md").read_text() == table


def test_tta_gates_teacher_and_student_read_with_the_bundles_views(trained_run, synthetic_release, tmp_path):
    setting = "one epoch=epochs:1,batch_size:4"
    plain, flipped = tmp_path / "plain", tmp_path / "flipped"
    for out, extra in ((plain, []), (flipped, ["--tta", "flip"])):
        done = _curves("--run", trained_run, "--data", synthetic_release, "--out", out, "--setting", setting, *extra)
        assert done.returncode == 0, done.stderr[-2000:]
    plain_result, flipped_result = (json.loads(out.with_suffix(".json").read_text()) for out in (plain, flipped))
    assert plain_result["views"] == ["identity"] and flipped_result["views"] == ["identity", "hflip"]
    # the same student (the same seed, trained on single views either way) ...
    assert plain_result["rows"][0]["start"] == flipped_result["rows"][0]["start"]
    # ... judged on what the bundle would compute: both models' P_FI averaged over the views
    plain_gate, flipped_gate = plain_result["rows"][0]["gate"], flipped_result["rows"][0]["gate"]
    assert plain_gate["mean_abs_dp"] != flipped_gate["mean_abs_dp"]
    assert "read with 2 views (identity, hflip)" in flipped.with_suffix(".md").read_text()
    assert "read with" not in plain.with_suffix(".md").read_text()


def test_a_bad_setting_or_run_is_one_line_and_writes_nothing(trained_run, synthetic_release, tmp_path):
    out = tmp_path / "results" / "curves"
    unknown = _curves("--run", trained_run, "--data", synthetic_release, "--out", out, "--setting", "x=speed:2")
    assert unknown.returncode == 1 and unknown.stderr.strip().startswith("error: --setting 'x': no QAT setting 'speed'")
    assert len(unknown.stderr.strip().splitlines()) == 1
    bad_value = _curves("--run", trained_run, "--data", synthetic_release, "--out", out,
                        "--setting", "x=overflow_fix:sometimes")
    assert bad_value.returncode == 1 and "overflow fix 'sometimes'" in bad_value.stderr
    six = _curves("--run", trained_run, "--data", synthetic_release, "--out", out, "--setting", "x=", "--tta", "six")
    assert six.returncode == 1 and six.stderr.strip() == "error: --tta 'six': not one of flip, flip4"
    no_run = _curves("--run", tmp_path, "--data", synthetic_release, "--out", out, "--setting", "x=")
    assert no_run.returncode == 1 and "no model.safetensors" in no_run.stderr
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"rows": [{"label": "x"}]}')
    unreadable = _curves("--plot", bad_json)
    assert unreadable.returncode == 1 and "bad.json: not a qat_curves result" in unreadable.stderr
    assert len(unreadable.stderr.strip().splitlines()) == 1 and not list(tmp_path.glob("bad.*[!n]"))
    missing = _curves("--plot", tmp_path / "nope.json")
    assert missing.returncode == 1 and "nope.json: result file not found" in missing.stderr
    assert not out.parent.exists()
