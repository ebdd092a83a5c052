"""The `edgederm` command line.

Commands are thin: they parse options and hand them to a library function.
Heavy libraries are imported inside the commands that need them, so device-side
commands never load torch. Any EdgeDermError becomes one line on stderr and
exit code 1.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgederm.errors import EdgeDermError

app = typer.Typer(help="EdgeDerm: offline skin-lesion triage from paired clinical and dermoscopy photos.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Write and check datasets in the derm7pt release_v0 layout.", no_args_is_help=True)
model_app = typer.Typer(help="Inspect the model family and its presets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")


def _one_line_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EdgeDermError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(code=1) from None
    return wrapper


def _progress(desc: str, unit: str):
    from tqdm import tqdm
    return lambda iterable, total=None: tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True)


@data_app.command("synth")
@_one_line_errors
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to create (the release root).")],
    cases: Annotated[int, typer.Option(help="Number of cases (the real release has 1011).")] = 600,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same release, byte for byte.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes drawing images.")] = min(2, os.cpu_count() or 1),
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
):
    """Write a synthetic release in the exact derm7pt release_v0 layout."""
    from edgederm.data.synth import write_synthetic_release
    path = write_synthetic_release(out, cases=cases, seed=seed, workers=workers, force=force,
                                   progress=_progress("drawing", "case"))
    typer.echo(f"wrote {cases} cases to {path}")


@data_app.command("check")
@_one_line_errors
def data_check(
    release: Annotated[Path, typer.Argument(help="A release_v0 folder (real or synthetic).")],
    images: Annotated[bool, typer.Option(help="Decode every image (finds corrupt and truncated files).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report instead of tables.")] = False,
):
    """Print per-split, per-class counts and every problem found; exit 1 on any problem."""
    from edgederm import labels as L
    from edgederm.data.release import SPLITS, scan_release
    result = scan_release(release, verify_images=images, progress=None if as_json else _progress("decoding", "image"))
    rel = result.release
    report = {
        "release": str(release),
        "splits": {s: {"cases": len(rel.split(s)),
                       "counts": {t.key: dict(zip(t.classes, rel.class_counts(s)[t.key])) for t in L.TASKS}}
                   for s in SPLITS},
        "problems": result.problems,
        "notes": result.notes,
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        header = f"{'task':<5} {'class':<5}" + "".join(f"{s:>7}" for s in SPLITS) + f"{'all':>7}"
        typer.echo(f"{release}: " + ", ".join(f"{s} {report['splits'][s]['cases']}" for s in SPLITS) + " cases")
        typer.echo(header)
        for t in L.TASKS:
            for c in t.classes:
                n = [report["splits"][s]["counts"][t.key][c] for s in SPLITS]
                typer.echo(f"{t.key:<5} {c:<5}" + "".join(f"{v:>7}" for v in n) + f"{sum(n):>7}")
        for note in result.notes:
            typer.echo(f"note: {note}")
        for problem in result.problems:
            typer.echo(f"problem: {problem}", err=True)
        typer.echo(f"{len(result.problems)} problem(s)")
    if result.problems:
        raise typer.Exit(code=1)


@model_app.command("summary")
@_one_line_errors
def model_summary(
    preset: Annotated[str, typer.Option(help="Preset name: paper, sff-cat, aff-cat, aff-bab, aff-aab, tiny.")] = "paper",
    config: Annotated[Optional[Path], typer.Option(help="A model config JSON file (overrides --preset).")] = None,
    pretrained_clinical: Annotated[Optional[Path], typer.Option(help="Local weights file for the clinical encoder.")] = None,
    pretrained_derm: Annotated[Optional[Path], typer.Option(help="Local weights file for the dermoscopy encoder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """Parameters (millions) and GFLOPs per component and in total."""
    from edgederm.models import ModelConfig, create_model, get_preset
    from edgederm.models.summary import format_summary, summarize
    cfg = ModelConfig.load(config) if config else get_preset(preset)
    summary = summarize(create_model(cfg, pretrained_clinical, pretrained_derm))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        name = config if config else preset
        typer.echo(f"{name}: {cfg.framework.upper()}+{cfg.fusion.upper()}, clinical {cfg.clinical_encoder}, "
                   f"dermoscopy {cfg.derm_encoder}, {cfg.img_size} px, fusion at stages {list(cfg.fusion_stages)}")
        typer.echo(format_summary(summary))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
