"""Train every configuration of a grid and rank them on the valid split.

    python benchmarks/dev/recipe_sweep.py --data RELEASE --grid benchmarks/dev/grids/edge-160.toml --out DIR
        [--report-test] [--only NAME ...] [--dry-run] [--short-epochs N]

A grid is a TOML file: a preset, a `[base]` with `model` / `train` tables that
every configuration starts from, and one `[[config]]` per run with a `name`, a
`note` and its own `model` / `train` changes (the same keys as a config file
for `edgederm train --config`):

    preset = "edge"
    [base.model]
    img_size = 160
    [[config]]
    name = "pre-logits"
    note = "heads on the encoders' pre-logits features"
    model = { branch_features = "pre_logits" }

Each configuration trains into DIR/runs/NAME. Resumable: a finished run
(model.safetensors) is scored without training again, a started one resumes
from its last checkpoint (one stopped before its first starts again), and a
run whose saved config differs from the grid's is refused (rename it or
delete the folder). Every branch (P_C, P_D, P_FU, or jif-mmfa's P_I, P_M,
P_FU, and the weighted P_FI) is scored on valid; test only with
--report-test, because defaults change on valid evidence alone. A configuration with
`branch_weights_tta` is scored with 6-view TTA (and its TTA-searched weights);
one with `tta = "flip"` (or "flip4", "six") is scored with those views
(edgederm.models.tta), and when its training equals an earlier
configuration's in the grid it is scored on that configuration's run, not
trained again, whether or not --only names the earlier one.
Writes DIR/sweep.json and DIR/sweep.md,
sorted by P_FI's valid averaged AUC, with minutes of training per run, the
clinic's figure beside the AUC (melanoma specificity and patients referred at
the threshold chosen on valid for 90 % melanoma sensitivity: what `diagnose`
reports) and the CPU the minutes were measured on.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import tomllib
from dataclasses import fields, replace
from pathlib import Path

from edgederm.benchmarks.host import host_facts
from edgederm.errors import ConfigError, EdgeDermError
from edgederm.evaluation.evaluate import evaluate_run
from edgederm.models.tta import views_of
from edgederm.models.config import ModelConfig
from edgederm.presets import resolve_config
from edgederm.training.checkpoint import POINTER
from edgederm.training.recipe import TrainConfig
from edgederm.training.trainer import FINAL, train

# every branch a model family scores: the two-encoder models P_C, P_D, P_FU; jif-mmfa P_I (both photos), P_M (the
# metadata), P_FU (joint); P_FI, their weighted average, for all
BRANCH_NAMES = {"final": "P_FI", "clinical": "P_C", "derm": "P_D", "image": "P_I", "metadata": "P_M", "fusion": "P_FU"}


def read_grid(path: Path) -> tuple[str, dict, list[dict]]:
    """(preset, base {"model", "train"}, configurations), checked."""
    try:
        grid = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: grid file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: cannot parse ({e})") from None
    unknown = sorted(set(grid) - {"preset", "base", "config"})
    if unknown or "preset" not in grid or not grid.get("config"):
        raise ConfigError(f"{path}: a grid needs 'preset' and at least one [[config]]"
                          + (f"; unknown key(s) {', '.join(unknown)}" if unknown else ""))
    names = [c.get("name") for c in grid["config"]]
    if not all(isinstance(n, str) and n and "/" not in n for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"{path}: every [[config]] needs a unique name usable as a folder name")
    for config in grid["config"]:
        extra = sorted(set(config) - {"name", "note", "model", "train", "tta"})
        if extra:
            raise ConfigError(f"{path}: [[config]] {config['name']}: unknown key(s) {', '.join(extra)}")
        if "tta" in config:
            views_of(config["tta"], what=f"{path}: [[config]] {config['name']}: tta")   # before any training
    return grid["preset"], grid.get("base", {}), grid["config"]


def configuration(preset: str, base: dict, config: dict, grid: Path) -> tuple[ModelConfig, TrainConfig]:
    """Preset <- base <- the configuration's own changes, through the same resolution as `train --config`."""
    tables = {"model": {**base.get("model", {}), **config.get("model", {})},
              "train": {**base.get("train", {}), **config.get("train", {})}}
    return resolve_config(preset, tables=tables, where=f"{grid} [[config]] {config['name']}")


def shortened(train_cfg: TrainConfig, epochs: int) -> TrainConfig:
    """The recipe cut to `epochs` (a record that every configuration trains, not a ranking): one SWA epoch
    where it averages, at most one warm-up epoch, a cycle over what is left."""
    swa = 1 if train_cfg.swa_epochs and epochs > 1 else 0
    return replace(train_cfg, epochs=epochs, swa_epochs=swa,
                   warmup_epochs=min(train_cfg.warmup_epochs, 1, max(epochs - swa - 1, 0)))


def resolve_grid(grid: Path, only: list[str] | None = None,
                 short_epochs: int | None = None) -> tuple[str, list[tuple[dict, ModelConfig, TrainConfig]]]:
    """(preset, [(configuration, model config, train config)]) of a grid, restricted to `only` and cut to
    `short_epochs`; every error is raised here, before any training."""
    preset, base, configs = read_grid(grid)
    if only:
        missing = sorted(set(only) - {c["name"] for c in configs})
        if missing:
            raise ConfigError(f"{grid}: no configuration named {', '.join(missing)}")
        configs = [c for c in configs if c["name"] in only]
    resolved = [(c, *configuration(preset, base, c, grid)) for c in configs]
    if short_epochs is not None:
        resolved = [(c, model, shortened(train, short_epochs)) for c, model, train in resolved]
    return preset, resolved


def training_key(model_cfg: ModelConfig, train_cfg: TrainConfig) -> str:
    """What a configuration trains, as JSON: two configurations with the same key train the same weights."""
    return json.dumps({"model": model_cfg.to_dict(), "train": training_of(train_cfg.to_dict())}, sort_keys=True)


def run_names(grid: Path, short_epochs: int | None = None) -> dict[str, str]:
    """Each configuration's run folder name: the first configuration of the whole grid that trains the same. Rows
    that differ only in how they are scored (their views) then share one training, whichever of them --only
    names and in whichever invocation."""
    _, resolved = resolve_grid(grid, None, short_epochs)
    owner: dict[str, str] = {}
    return {c["name"]: owner.setdefault(training_key(model, train), c["name"]) for c, model, train in resolved}


def write_results(out: Path, stem: str, result: dict, markdown: str) -> None:
    """OUT/STEM.json (written under a temporary name, then renamed) and OUT/STEM.md; prints the Markdown."""
    tmp = out / f"{stem}.json.partial"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out / f"{stem}.json")
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")


def training_of(train: dict) -> dict:
    """What of a recipe changes the weights it trains: all of it but `source` (a description) and, without SWA,
    `swa_lr` (never used). Two grids whose bases name the same training differently then share its run."""
    kept = {k: v for k, v in train.items() if k != "source"}
    if not kept.get("swa_epochs"):
        kept.pop("swa_lr", None)
    return kept


def _same_config(run: Path, model_cfg: ModelConfig, train_cfg: TrainConfig) -> bool:
    """Whether a run folder trained `model_cfg` / `train_cfg`. A key the run's config.json predates (a knob added
    since, whose default is what every run did before) reads as its default."""
    saved = json.loads((run / "config.json").read_text())
    recipe_defaults = {f.name: f.default for f in fields(TrainConfig)}
    return (ModelConfig.from_saved(saved["model"]) == model_cfg
            and training_of({**recipe_defaults, **saved["train"]}) == training_of(train_cfg.to_dict()))


def run_one(name: str, model_cfg: ModelConfig, train_cfg: TrainConfig, data: Path, out: Path,
            report_test: bool, tta: str | None = None, run_name: str | None = None) -> dict:
    """Train (or resume, or reuse) one configuration and score it. `run_name`: the run folder, when an earlier
    configuration trains the same; `tta`: the view set it is scored with."""
    run = out / "runs" / (run_name or name)
    timing = run / "sweep-time.json"
    if (run / "config.json").is_file() and not _same_config(run, model_cfg, train_cfg):
        raise ConfigError(f"{run}: trained with another configuration than the grid's {name!r} "
                          "(rename the configuration or delete the folder)")
    if (run / FINAL).is_file():
        print(f"{name}: finished, scoring it again without training")
    else:
        resume = (run / "checkpoints" / POINTER).is_file()
        if (run / "config.json").is_file() and not resume:
            # stopped before its first checkpoint: nothing to resume, and the folder holds no epoch, so the same
            # configuration (checked above) starts again instead of refusing to resume
            shutil.rmtree(run)
        print(f"{name}: training{' (resuming)' if resume else ''} -> {run}")
        started = time.perf_counter()
        train(data, run, model_cfg, train_cfg, resume=resume)
        spent = (time.perf_counter() - started) / 60
        previous = json.loads(timing.read_text())["minutes"] if timing.is_file() else 0.0
        timing.write_text(json.dumps({"minutes": previous + spent}) + "\n")
    minutes = json.loads(timing.read_text())["minutes"] if timing.is_file() else None
    # a configuration that searches its branch weights on TTA outputs is scored with TTA, as it would be used
    tta = tta or train_cfg.branch_weights_tta
    scores = {"valid": evaluate_run(run, data, split="valid", tta=tta)}
    if report_test:
        scores["test"] = evaluate_run(run, data, split="test", tta=tta)
    row = {"name": name, "run": str(run), "minutes": minutes, "tta": tta, "fusion_features": model_cfg.fusion_features,
           "branch_features": model_cfg.branch_features, "fusion": model_cfg.fusion, "img_size": model_cfg.img_size}
    for split, evaluation in scores.items():
        row[split] = {b: {"avg_auc": evaluation["branches"][b]["avg_auc"], "avg_acc": evaluation["branches"][b]["avg_acc"]}
                      for b in BRANCH_NAMES if b in evaluation["branches"]}
        row[split]["cases"] = evaluation["cases"]
        # the clinic's figure: the reading diagnose reports, at the threshold chosen on valid for the run's
        # melanoma sensitivity (90 % by default)
        row[split]["operating_point"] = evaluation["calibration"]["operating_point"]
    return row


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def table(rows: list[dict], report_test: bool) -> str:
    # the branches the rows' models have, in BRANCH_NAMES' order; a row without one shows "-"
    branches = [b for b in BRANCH_NAMES if b != "final" and any(b in row["valid"] for row in rows)]
    head = ["#", "configuration", "valid AUC P_FI", *(BRANCH_NAMES[b] for b in branches), "valid ACC P_FI",
            "valid MEL spec. @ sens.", "referred %"]
    if report_test:
        head += ["test AUC P_FI", "test ACC P_FI"]
    head += ["minutes", "what changes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(rows, 1):
        valid = row["valid"]
        cells = [str(i), f"`{row['name']}`", f"{100 * valid['final']['avg_auc']:.2f}",
                 *(f"{100 * valid[b]['avg_auc']:.2f}" if b in valid else "-" for b in branches),
                 f"{100 * valid['final']['avg_acc']:.2f}"]
        op = valid.get("operating_point")       # absent in records written before it was kept
        cells += ([f"{_percent(op['specificity'])} @ {_percent(op['sensitivity'])}", f"{op['referred_percent']:.1f}"]
                  if op else ["-", "-"])
        if report_test:
            cells += [f"{100 * row['test']['final']['avg_auc']:.2f}", f"{100 * row['test']['final']['avg_acc']:.2f}"]
        cells += ["-" if row["minutes"] is None else f"{row['minutes']:.1f}", row.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sensitivity_target(rows: list[dict]) -> str:
    targets = {row["valid"]["operating_point"]["target_sensitivity"] for row in rows}
    return " / ".join(f"{100 * t:.0f} %" for t in sorted(targets))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a release_v0 folder (real or synthetic)")
    parser.add_argument("--grid", type=Path, required=True, help="grid TOML file")
    parser.add_argument("--out", type=Path, required=True, help="sweep folder: runs/, sweep.json, sweep.md")
    parser.add_argument("--report-test", action="store_true", help="also score the test split")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these configurations")
    parser.add_argument("--dry-run", action="store_true", help="resolve and print the configurations only")
    parser.add_argument("--short-epochs", type=int, metavar="N",
                        help="train every configuration for N epochs only (1 SWA epoch where it averages): a record "
                             "that each trains end to end, not a ranking")
    args = parser.parse_args(argv)
    try:
        if args.short_epochs is not None and args.short_epochs < 1:
            raise ConfigError(f"--short-epochs {args.short_epochs}: at least 1")
        preset, resolved = resolve_grid(args.grid, args.only, args.short_epochs)
        if args.dry_run:
            for config, model_cfg, train_cfg in resolved:
                print(json.dumps({"name": config["name"], "model": model_cfg.to_dict(), "train": train_cfg.to_dict()}))
            return 0
        args.out.mkdir(parents=True, exist_ok=True)
        rows = []
        shared = run_names(args.grid, args.short_epochs)
        for config, model_cfg, train_cfg in resolved:
            row = run_one(config["name"], model_cfg, train_cfg, args.data, args.out, args.report_test,
                          tta=config.get("tta"), run_name=shared[config["name"]])
            rows.append({**row, "note": config.get("note", "")})
    except EdgeDermError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rows.sort(key=lambda r: -r["valid"]["final"]["avg_auc"])
    host = host_facts()
    result = {"grid": str(args.grid), "preset": preset, "data": str(args.data), "report_test": args.report_test,
              "short_epochs": args.short_epochs, "host": {"cpu": host["cpu"], "cores": host["cores"]}, "rows": rows}
    short = (f" Every configuration cut to {args.short_epochs} epoch(s) (`--short-epochs`): a record that each "
             "trains, not a ranking." if args.short_epochs else "")
    markdown = (f"Sweep of `{args.grid.name}` (preset `{preset}`) on `{args.data}`, sorted by P_FI's valid averaged "
                f"AUC ({rows[0]['valid']['cases']} valid cases); minutes = training time on {host['cpu']} "
                f"({host['cores']} cores); melanoma specificity and patients referred at the threshold chosen on "
                f"valid for {_sensitivity_target(rows)} melanoma sensitivity.{short}\n\n"
                + table(rows, args.report_test) + "\n")
    write_results(args.out, "sweep", result, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
