"""benchmarks/dev/recipe_sweep.py end to end on the synthetic release: two tiny
configurations of one epoch, ranked on valid, resumable, and its refusals."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dev" / "recipe_sweep.py"
GRID = """
preset = "tiny"
[base.model]
img_size = 64
[base.train]
epochs = 1
batch_size = 8
swa_epochs = 0
warmup_epochs = 0
seed = 7

[[config]]
name = "pre-logits"
note = "default heads"

[[config]]
name = "last-stage-cat"
note = "last-stage heads, concatenation"
model = { branch_features = "last_stage", fusion = "cat" }

[[config]]
name = "flip-tta"
note = "the default run scored with flip TTA"
tta = "flip"
"""


def _script(script: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=900)


def _sweep(*args) -> subprocess.CompletedProcess:
    return _script(SCRIPT, *args)


def test_sweep_trains_ranks_on_valid_and_resumes(synthetic_release, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    out = tmp_path / "sweep"
    first = _sweep("--data", synthetic_release, "--grid", grid, "--out", out, "--report-test")
    assert first.returncode == 0, first.stderr[-2000:]
    result = json.loads((out / "sweep.json").read_text())
    rows = result["rows"]
    assert {r["name"] for r in rows} == {"pre-logits", "last-stage-cat", "flip-tta"}
    aucs = [r["valid"]["final"]["avg_auc"] for r in rows]
    assert aucs == sorted(aucs, reverse=True)                       # ranked by P_FI's valid averaged AUC
    assert all(r["minutes"] > 0 and set(r["valid"]) >= {"final", "clinical", "derm", "fusion"} for r in rows)
    assert all("test" in r for r in rows)
    by_name = {r["name"]: r for r in rows}
    assert by_name["last-stage-cat"]["branch_features"] == "last_stage" and by_name["last-stage-cat"]["fusion"] == "cat"
    # the same training as pre-logits: scored on its run with the two views, never trained twice
    assert by_name["flip-tta"]["run"] == by_name["pre-logits"]["run"] and by_name["flip-tta"]["tta"] == "flip"
    assert not (out / "runs" / "flip-tta").exists()
    assert by_name["flip-tta"]["valid"]["final"] != by_name["pre-logits"]["valid"]["final"]
    saved = json.loads((out / "runs" / "last-stage-cat" / "config.json").read_text())
    assert saved["model"]["fusion"] == "cat" and saved["train"]["epochs"] == 1 and saved["model"]["img_size"] == 64
    table = (out / "sweep.md").read_text()
    assert "| 1 | `" in table and "test AUC P_FI" in table and "last-stage heads, concatenation" in table
    # the clinic's figure beside the AUC, and the CPU the minutes were measured on
    for row in rows:
        op = row["valid"]["operating_point"]
        assert op["reading"] in ("seven_point_expected", "seven_point_argmax") and 0 <= op["referred_percent"] <= 100
        cells = next(line for line in table.splitlines() if f"`{row['name']}`" in line).split(" | ")
        assert cells[8] == f"{op['referred_percent']:.1f}"
    assert result["host"]["cpu"] and result["host"]["cpu"] in table and "valid MEL spec. @ sens." in table

    # resumable: finished runs are scored again, not trained again; without --report-test no test scores. A run
    # that predates a knob (its config.json lacks the key) did what the knob's default does: still the same run.
    # So is one whose recipe was described otherwise, or named an SWA rate it never used (no SWA here): another
    # grid's base for the same training.
    config = out / "runs" / "pre-logits" / "config.json"
    saved = json.loads(config.read_text())
    del saved["train"]["final_weights"], saved["train"]["ema_decay"]
    assert saved["train"]["swa_epochs"] == 0
    saved["train"].update(source="another grid's description", swa_lr=saved["train"]["swa_lr"] * 7)
    config.write_text(json.dumps(saved))
    again = _sweep("--data", synthetic_release, "--grid", grid, "--out", out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("finished, scoring it again without training") == 3
    rows_again = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["valid"] for r in rows_again] == [r["valid"] for r in rows]
    assert not any("test" in r for r in rows_again)
    # and the shared run is found when --only names the later row alone
    alone = _sweep("--data", synthetic_release, "--grid", grid, "--out", out, "--only", "flip-tta")
    assert alone.returncode == 0 and "flip-tta: finished, scoring it again without training" in alone.stdout
    assert json.loads((out / "sweep.json").read_text())["rows"][0]["run"] == by_name["pre-logits"]["run"]


def test_sweep_refuses_a_changed_configuration_and_a_bad_grid(synthetic_release, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    out = tmp_path / "sweep"
    assert _sweep("--data", synthetic_release, "--grid", grid, "--out", out, "--only", "pre-logits").returncode == 0
    grid.write_text(GRID.replace("epochs = 1", "epochs = 2"))
    changed = _sweep("--data", synthetic_release, "--grid", grid, "--out", out, "--only", "pre-logits")
    assert changed.returncode == 1
    assert "trained with another configuration than the grid's 'pre-logits'" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1
    grid.write_text(GRID.replace('fusion = "cat"', 'fusion = "sum"'))
    bad = _sweep("--data", synthetic_release, "--grid", grid, "--out", tmp_path / "other")
    assert bad.returncode == 1 and "fusion 'sum'" in bad.stderr
    assert not (tmp_path / "other").exists()                        # every error before any training
    grid.write_text(GRID.replace('tta = "flip"', 'tta = "flop"'))
    views = _sweep("--data", synthetic_release, "--grid", grid, "--out", tmp_path / "other")
    assert views.returncode == 1 and "[[config]] flip-tta: tta 'flop': not one of flip, flip4, six" in views.stderr
    missing = _sweep("--data", synthetic_release, "--grid", tmp_path / "nope.toml", "--out", out)
    assert missing.returncode == 1 and "nope.toml: grid file not found" in missing.stderr


def test_sweep_starts_again_a_run_stopped_before_its_first_checkpoint(synthetic_release, tmp_path):
    """A run killed during its first epoch has a config.json and no checkpoint: the sweep trains it from the start
    (it used to try to resume it and stop with "no checkpoint to resume from")."""
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    out = tmp_path / "sweep"
    assert _sweep("--data", synthetic_release, "--grid", grid, "--out", out, "--only", "pre-logits").returncode == 0
    run = out / "runs" / "pre-logits"
    for path in run.iterdir():                     # what a run holds before its first checkpoint
        if path.name != "config.json":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    again = _sweep("--data", synthetic_release, "--grid", grid, "--out", out, "--only", "pre-logits")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"pre-logits: training -> {run}" in again.stdout and (run / "model.safetensors").is_file()


def test_sweep_tables_the_branches_jif_mmfa_has(synthetic_release, tmp_path):
    """jif-mmfa scores an image, a metadata and a joint branch, not P_C / P_D: the table shows the branches the
    model has."""
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.replace('preset = "tiny"', 'preset = "jif-mmfa-tiny"').split("[[config]]")[0]
                    + '[[config]]\nname = "jif"\nnote = "jif-mmfa-tiny"\n')
    out = tmp_path / "sweep"
    swept = _sweep("--data", synthetic_release, "--grid", grid, "--out", out)
    assert swept.returncode == 0, swept.stderr[-2000:]
    (row,) = json.loads((out / "sweep.json").read_text())["rows"]
    assert set(row["valid"]) == {"final", "image", "metadata", "fusion", "cases", "operating_point"}
    head, _, cells = (out / "sweep.md").read_text().splitlines()[2:5]
    assert "| valid AUC P_FI | P_I | P_M | P_FU | valid ACC P_FI |" in head and "P_C" not in head
    assert f"| {100 * row['valid']['metadata']['avg_auc']:.2f} |" in cells


REPEATS = Path(__file__).resolve().parents[1] / "benchmarks" / "dev" / "repeat_runs.py"


def _repeats(*args) -> subprocess.CompletedProcess:
    return _script(REPEATS, *args)


def test_repeat_runs_train_one_run_per_seed_and_report_mean_and_std(synthetic_release, tmp_path):
    import statistics
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    out = tmp_path / "repeats"
    first = _repeats("--data", synthetic_release, "--grid", grid, "--out", out, "--seeds", 2, "--only", "pre-logits",
                     "--split", "test")
    assert first.returncode == 0, first.stderr[-2000:]
    result = json.loads((out / "repeats.json").read_text())
    (row,) = result["rows"]
    assert row["seeds"] == [0, 1] and result["split"] == "test" and result["cases"] > 0
    for seed in (0, 1):                                   # the grid's seed 7 replaced by each repeat's
        assert json.loads((out / "runs" / f"pre-logits-seed{seed}" / "config.json").read_text())["train"]["seed"] == seed
    aucs = row["values"]["avg_auc"]
    assert len(aucs) == 2 and aucs[0] != aucs[1]          # two different trainings
    assert row["stats"]["avg_auc"]["mean"] == statistics.fmean(aucs)
    assert row["stats"]["avg_auc"]["std"] == statistics.stdev(aucs)
    table = (out / "repeats.md").read_text()
    mean, std = 100 * statistics.fmean(aucs), 100 * statistics.stdev(aucs)
    assert f"| `pre-logits` | {mean:.1f}±{std:.1f} |" in table
    assert "| configuration | PN | BWV | VS | PIG | STR | DaG | RS | DIAG |" in table
    # on valid by default (what defaults are chosen on), the same runs scored again, not trained again
    again = _repeats("--data", synthetic_release, "--grid", grid, "--out", out, "--seeds", 2, "--only", "pre-logits")
    assert again.returncode == 0 and again.stdout.count("finished, scoring it again without training") == 2
    on_valid = json.loads((out / "repeats.json").read_text())
    assert on_valid["split"] == "valid" and on_valid["cases"] != result["cases"]
    assert "valid split" in (out / "repeats.md").read_text()
    # a row with views of its own (the grid's `tta`) is scored with them, as the sweep scores it, on the runs of
    # the earlier row that trains the same (pre-logits), even when --only names it alone
    flip = _repeats("--data", synthetic_release, "--grid", grid, "--out", out, "--seeds", 1, "--only", "flip-tta")
    assert flip.returncode == 0, flip.stderr[-2000:]
    assert "pre-logits-seed0: finished, scoring it again without training" in flip.stdout
    assert not (out / "runs" / "flip-tta-seed0").exists()
    (flip_row,) = json.loads((out / "repeats.json").read_text())["rows"]
    from edgederm.evaluation.evaluate import evaluate_run
    run = out / "runs" / "pre-logits-seed0"
    assert flip_row["tta"] == "flip"
    assert flip_row["values"]["avg_auc"][0] == evaluate_run(run, synthetic_release, "valid", tta="flip")["branches"][
        "final"]["avg_auc"] != evaluate_run(run, synthetic_release, "valid")["branches"]["final"]["avg_auc"]
    assert "| flip | the default run scored with flip TTA |" in (out / "repeats.md").read_text()
    bad = _repeats("--data", synthetic_release, "--grid", grid, "--out", out, "--seeds", 0)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: --seeds must be >= 1, got 0"


def test_short_epochs_cut_every_configuration_and_keep_it_valid(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.replace("swa_epochs = 0", "swa_epochs = 4").replace("warmup_epochs = 0", "warmup_epochs = 2")
                    .replace("epochs = 1\n", "epochs = 16\n"))
    dry = _sweep("--data", tmp_path, "--grid", grid, "--out", tmp_path / "out", "--dry-run", "--short-epochs", "2")
    assert dry.returncode == 0, dry.stderr[-2000:]
    trains = [json.loads(line)["train"] for line in dry.stdout.splitlines()]
    assert len(trains) == 3
    assert all((t["epochs"], t["swa_epochs"], t["warmup_epochs"]) == (2, 1, 0) for t in trains)
    assert not (tmp_path / "out").exists()
    bad = _sweep("--data", tmp_path, "--grid", grid, "--out", tmp_path / "out", "--short-epochs", "0")
    assert bad.returncode == 1 and "--short-epochs 0: at least 1" in bad.stderr


GAP = Path(__file__).resolve().parents[1] / "benchmarks" / "dev" / "baseline_gap.py"


def _sweep_record(path: Path, name: str, final: float, cpu: str | None) -> Path:
    branches = {b: {"avg_auc": final - 0.01 * i, "avg_acc": 0.7} for i, b in enumerate(("final", "clinical", "derm",
                                                                                       "fusion"))}
    record = {"rows": [{"name": name, "minutes": 12.5, "valid": {**branches, "cases": 203}}]}
    if cpu:
        record["host"] = {"cpu": cpu, "cores": 2}
    path.write_text(json.dumps(record))
    return path


def test_baseline_gap_tables_each_row_against_the_plain_fine_tune(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"valid_weighted": [84.3, 73.0], "valid_clin": [70.1, 60.0], "valid_derm": [80.2, 70.0],
                                 "valid_fusion": [83.9, 72.0], "minutes": 18.0}))
    before = _sweep_record(tmp_path / "before.json", "baseline-recipe", 0.8305, None)   # an older sweep: no host
    now = _sweep_record(tmp_path / "now.json", "baseline-recipe", 0.8412, "Some CPU")
    out = tmp_path / "results" / "gap"
    result = _script(GAP, "--plain", plain, "--row", f"before={before}:baseline-recipe",
                     "--row", f"views resized once={now}:baseline-recipe", "--cpu", "Some CPU", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (out.parent / "gap.md").read_text().splitlines()
    assert lines[4].startswith("| plain fine-tune") and "| 84.30 |  |" in lines[4]
    assert lines[5].startswith("| before | 83.05 | -1.25 |") and lines[6].startswith("| views resized once | 84.12 | -0.18 |")
    assert json.loads((out.parent / "gap.json").read_text())["rows"][2]["minutes"] == 12.5
    other = _script(GAP, "--plain", plain, "--row", f"now={now}:baseline-recipe", "--cpu", "Another CPU", "--out", out)
    assert other.returncode != 0 and "compare on one CPU" in other.stderr
    missing = _script(GAP, "--plain", plain, "--row", f"now={now}:pre-logits", "--cpu", "Some CPU", "--out", out)
    assert missing.returncode != 0 and "no configuration 'pre-logits'" in missing.stderr
    absent = _script(GAP, "--plain", tmp_path / "nope.json", "--row", f"now={now}:baseline-recipe", "--cpu", "Some CPU",
                     "--out", tmp_path / "other" / "gap")
    assert absent.returncode != 0 and absent.stderr.strip().endswith("nope.json: plain fine-tune result not found")
    assert not (tmp_path / "other").exists()


def test_repeat_runs_reuse_the_sweeps_run_for_the_grids_own_seed(synthetic_release, tmp_path):
    """With --out the sweep's folder, the seed the grid trains with is the sweep's run, scored again and not
    trained again; the other seeds train beside it."""
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID.replace("seed = 7", "seed = 1"))
    out = tmp_path / "sweep"
    swept = _sweep("--data", synthetic_release, "--grid", grid, "--out", out, "--only", "pre-logits")
    assert swept.returncode == 0, swept.stderr[-2000:]
    repeats = _repeats("--data", synthetic_release, "--grid", grid, "--out", out, "--seeds", 2, "--only", "pre-logits")
    assert repeats.returncode == 0, repeats.stderr[-2000:]
    assert "pre-logits: finished, scoring it again without training" in repeats.stdout
    assert "pre-logits-seed0: training" in repeats.stdout and not (out / "runs" / "pre-logits-seed1").exists()
    (row,) = json.loads((out / "repeats.json").read_text())["rows"]
    sweep_auc = json.loads((out / "sweep.json").read_text())["rows"][0]["valid"]["final"]["avg_auc"]
    assert row["seeds"] == [0, 1] and row["values"]["avg_auc"][1] == sweep_auc


def test_every_shipped_grid_resolves(tmp_path):
    """The grids under benchmarks/dev/grids name real knobs with valid values (a dry run resolves each
    configuration through `train --config`'s checks, trains nothing)."""
    grids = sorted((SCRIPT.parent / "grids").glob("*.toml"))
    assert len(grids) >= 5
    for grid in grids:
        dry = _sweep("--data", tmp_path, "--grid", grid, "--out", tmp_path / "out", "--dry-run")
        assert dry.returncode == 0, f"{grid.name}: {dry.stderr[-500:]}"
        assert len(dry.stdout.splitlines()) >= 1
    assert not (tmp_path / "out").exists()


def test_the_rows_each_preset_took_train_what_the_preset_trains(tmp_path, monkeypatch):
    """`edge` took edge-160.toml's `edge-baseline-recipe` and `jif-mmfa` took jif-mmfa-160.toml's `jif-edge-recipe`
    (valid evidence over three seeds): the committed figures describe the presets only while the rows and the
    presets train the same, at the grids' 160 px."""
    from dataclasses import replace

    from edgederm.presets import get_preset
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from recipe_sweep import training_of
    for grid, row, preset in (("edge-160.toml", "edge-baseline-recipe", "edge"),
                              ("jif-mmfa-160.toml", "jif-edge-recipe", "jif-mmfa")):
        dry = _sweep("--data", tmp_path, "--grid", SCRIPT.parent / "grids" / grid, "--out", tmp_path / "out",
                     "--dry-run", "--only", row)
        assert dry.returncode == 0, dry.stderr[-500:]
        (resolved,) = [json.loads(line) for line in dry.stdout.splitlines()]
        chosen = get_preset(preset)
        assert resolved["model"] == replace(chosen.model, img_size=160).to_dict(), grid
        assert training_of(resolved["train"]) == training_of(chosen.recipe.to_dict()), grid
