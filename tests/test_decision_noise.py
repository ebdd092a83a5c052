"""benchmarks/dev/decision_noise.py on the session's trained tiny run: the FP32 model judged by the export's gate
against itself on the same valid photos re-saved as JPEG or mirrored."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgederm.data.inputs import load_arrays
from edgederm.data.release import read_release
from edgederm.models.io import load_model

DEV = Path(__file__).resolve().parents[1] / "benchmarks" / "dev"
SCRIPT = DEV / "decision_noise.py"


def _noise(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture
def decision_noise(monkeypatch):
    monkeypatch.syspath_prepend(str(DEV))
    import decision_noise
    return decision_noise


def test_the_perturbed_photos_are_the_same_photos_changed_a_little(decision_noise, trained_run, synthetic_release):
    model = load_model(trained_run / "model.safetensors")
    cfg = model.cfg.preprocess()
    cases = read_release(synthetic_release).split("valid")[:4]
    inputs = load_arrays(cases, cfg, model.input_names)
    mirrored = decision_noise.perturbed_inputs("mirror", cases, inputs, model.input_names, cfg)
    assert all(np.array_equal(m, x[..., ::-1]) for m, x in zip(mirrored, inputs))
    high, low = (decision_noise.perturbed_inputs(f"jpeg-{q}", cases, inputs, model.input_names, cfg) for q in (95, 85))
    for photo, *resaved in zip(inputs, high, low):
        for r in resaved:
            # changed, and not far (inputs are standardised). Not ordered by quality: the synthetic photos are
            # JPEGs already, and a save at the quality they were written with gives nearly the same pixels back
            assert r.shape == photo.shape and 0 < np.abs(r - photo).mean() < 0.2


def test_the_gate_counts_what_each_change_turned(trained_run, synthetic_release, tmp_path):
    out = tmp_path / "results" / "noise"
    done = _noise("--run", trained_run, "--data", synthetic_release, "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.with_suffix(".json").read_text())
    valid_cases = len(read_release(synthetic_release).split("valid"))
    assert result["cases"] == valid_cases
    assert [row["perturbation"] for row in result["rows"]] == ["jpeg-95", "jpeg-85", "mirror"]
    for row in result["rows"]:
        gate = row["gate"]
        assert gate["cases"] == valid_cases and gate["mean_abs_dp"] > 0       # the photos did change
        assert (gate["verdict"] == "pass") == (not gate["reasons"])
        for decision, count in (("diagnosis", gate["diagnosis_flips"]), ("seven_point", gate["seven_point_flips"])):
            margins = [c["margin"] for c in gate["flipped"][decision]]
            assert len(margins) == count and margins == sorted(margins)
            assert sum(m > 0.1 for m in margins) == gate["confident_flips"][decision]
    table = out.with_suffix(".md").read_text()
    assert table.count("| each photo saved again as JPEG, quality 95 |") == 2      # the gate's table and the margins'
    # the table again from the JSON alone
    out.with_suffix(".md").unlink()
    assert _noise("--render", out.with_suffix(".json")).returncode == 0
    assert out.with_suffix(".md").read_text() == table


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, synthetic_release):
    out = tmp_path / "noise"
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    done = _noise("--run", not_a_run, "--data", synthetic_release, "--out", out)
    assert done.returncode == 1 and done.stderr.strip() == f"error: {not_a_run}: no model.safetensors (not a finished run)"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    done = _noise("--render", bad)
    assert done.returncode == 1 and done.stderr.strip().startswith(f"error: {bad}: not a decision_noise result")
    assert not list(tmp_path.glob("noise*")) and not (tmp_path / "bad.md").exists()
