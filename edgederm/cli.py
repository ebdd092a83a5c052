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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgederm import labels as L
from edgederm.errors import EdgeDermError, LabelError
from edgederm.presets import preset_names
from edgederm.scoring.gate import DEFAULT_MAX_FLIP_RATE

PRESET_NAMES = ", ".join(preset_names())

app = typer.Typer(help="EdgeDerm: offline skin-lesion triage from paired clinical and dermoscopy photos.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Write and check datasets in the derm7pt release_v0 layout.", no_args_is_help=True)
model_app = typer.Typer(help="Inspect the model family and its presets.", no_args_is_help=True)
engine_app = typer.Typer(help="TensorRT engines, built on the device from a jetson bundle.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
app.add_typer(engine_app, name="engine")


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


_MARGIN_HELP = ("Gate margin, AUC points: a variant passes when the one-sided 95 % upper bound of its "
                "averaged-AUC drop from the reference is within it.")
_FLIP_HELP = ("Decision gate: largest share of cases (percent) whose top diagnosis or seven-point reading may "
              "differ from the reference's; a significant loss of melanomas referred also fails. 100 turns it off.")

_PRETRAINED_HELP = ("Initial weights of the {} encoder: auto (installed offline weights; none found: refused), "
                    "none (random init, on purpose), a local weights file, or hub (download through the "
                    "Hugging Face hub: the only option that uses the network).")


_FUSION_FEATURES_HELP = ("What the fusion head reads: fused (the pooled fused maps), fused+pre_logits (those and "
                         "both encoders' pooled features), pre_logits (the pooled features only) or fused_head "
                         "(the last fused map through the dermoscopy encoder's conv head).")


@model_app.command("summary")
@_one_line_errors
def model_summary(
    preset: Annotated[str, typer.Option(help=f"Preset name: {PRESET_NAMES}.")] = "paper",
    config: Annotated[Optional[Path], typer.Option(help="A model config JSON file (overrides --preset).")] = None,
    pretrained_clinical: Annotated[str, typer.Option(help=_PRETRAINED_HELP.format("clinical"))] = "none",
    pretrained_derm: Annotated[str, typer.Option(help=_PRETRAINED_HELP.format("dermoscopy"))] = "none",
    branch_features: Annotated[Optional[str], typer.Option(
        help="What the clinical and dermoscopy heads read: pre_logits or last_stage.")] = None,
    fusion_features: Annotated[Optional[str], typer.Option(help=_FUSION_FEATURES_HELP)] = None,
    list_presets: Annotated[bool, typer.Option(
        "--list", help="List every preset with its architecture and its recipe, and stop.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """Parameters (millions) and GFLOPs per component and in total."""
    if list_presets:
        _list_presets(as_json)
        return
    from edgederm.models import ModelConfig, create_model
    from edgederm.models.config import with_overrides
    from edgederm.models.pretrained import initialize
    from edgederm.models.summary import format_summary, summarize
    from edgederm.presets import get_preset
    cfg = with_overrides(ModelConfig.load(config) if config else get_preset(preset).model,
                         branch_features=branch_features, fusion_features=fusion_features)
    if not as_json:
        typer.echo(f"{config or preset}: {cfg.framework.upper()}+{cfg.fusion.upper()}, clinical "
                   f"{cfg.clinical_encoder}, dermoscopy {cfg.derm_encoder}, {cfg.img_size} px, fusion at stages "
                   f"{list(cfg.fusion_stages)}")
    model = create_model(cfg)
    initial = initialize(model, pretrained_clinical, pretrained_derm, log=None if as_json else typer.echo)
    summary = {**summarize(model), "initial_weights": initial}
    typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


def _list_presets(as_json: bool) -> None:
    """Every preset: its architecture in a few words and its recipe's one-line source (no model is built)."""
    from edgederm.presets import get_preset
    rows = []
    for name in preset_names():
        p = get_preset(name)
        m = p.model
        rows.append({"preset": name, "architecture": m.architecture, "clinical_encoder": m.clinical_encoder,
                     "derm_encoder": m.derm_encoder, "fusion": m.fusion, "img_size": m.img_size,
                     "epochs": p.recipe.epochs, "recipe": p.recipe.source})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["preset"]) for r in rows)
    for r in rows:
        network = (f"clinical-only, {r['clinical_encoder']}" if r["architecture"] == "clinical-only" else
                   f"{r['architecture']}" + (f" ({r['fusion']})" if r["architecture"] == "two-encoder" else "")
                   + f", {r['clinical_encoder']} + {r['derm_encoder']}")
        typer.echo(f"{r['preset']:<{width}}  {network}, {r['img_size']} px")
        typer.echo(f"{'':<{width}}  recipe: {r['recipe']}")


@dataclass(frozen=True)
class ModelFlags:
    """`train`'s model options, as typed (None: the preset's or the config file's value)."""
    clinical_encoder: str | None = None
    derm_encoder: str | None = None
    fusion: str | None = None
    fusion_stages: str | None = None      # "-2,-1" on the command line
    img_size: int | None = None
    normalization: str | None = None
    branch_features: str | None = None
    fusion_features: str | None = None
    crop: str | None = None
    drop_rate: float | None = None

    def overrides(self) -> dict:
        """ModelConfig overrides: the stages as a tuple of ints."""
        stages = tuple(int(s) for s in self.fusion_stages.split(",")) if self.fusion_stages else None
        return {**asdict(self), "fusion_stages": stages}


@dataclass(frozen=True)
class RecipeFlags:
    """`train`'s recipe options, as typed (None: the preset's or the config file's value)."""
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    encoder_lr_scale: float | None = None
    weight_decay: float | None = None
    warmup_epochs: int | None = None
    swa_epochs: int | None = None
    swa_lr: float | None = None
    validate_every: int | None = None
    augment: bool | None = None
    class_weights: bool | None = None
    seed: int | None = None
    workers: int | None = None
    amp: bool | None = None
    pretrained_clinical: str | None = None
    pretrained_derm: str | None = None
    optimizer: str | None = None
    schedule: str | None = None
    augment_policy: str | None = None
    label_smoothing: float | None = None
    branch_weights_tta: bool | None = None
    melanoma_sensitivity: float | None = None
    final_weights: str | None = None
    ema_decay: float | None = None
    mixup_alpha: float | None = None
    cutmix_alpha: float | None = None
    mix_prob: float | None = None


def _as_flags(values: dict) -> list[str]:
    """Options back into command-line flags, for re-launching under torchrun."""
    flags = []
    for name, value in values.items():
        if value is None or (value is False and name == "resume"):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            flags.append(f"{flag}={value}")     # '=' keeps values such as '-2,-1' from reading as flags
    return flags


# Long by its option declarations only (typer reads options from the signature); the body is a dozen lines.
@app.command("train")
@_one_line_errors
def train_command(
    data: Annotated[Path, typer.Option(help="A release_v0 folder: trains on `train`, selects on `valid`.")],
    out: Annotated[Path, typer.Option(help="Run folder to create (or to continue with --resume).")],
    preset: Annotated[Optional[str], typer.Option(
        help=f"Model + recipe: {PRESET_NAMES}. Default: the config file's `preset`, else paper.")] = None,
    config: Annotated[Optional[Path], typer.Option(
        help="JSON or TOML file with `model` / `train` tables (and `preset`); flags override it.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in OUT from its last checkpoint.")] = False,
    nproc: Annotated[int, typer.Option(help="Processes (one per GPU) launched through torchrun.")] = 1,
    clinical_encoder: Annotated[Optional[str], typer.Option(help="timm name of the clinical encoder.")] = None,
    derm_encoder: Annotated[Optional[str], typer.Option(help="timm name of the dermoscopy encoder.")] = None,
    fusion: Annotated[Optional[str], typer.Option(help="aab, bab or cat.")] = None,
    fusion_stages: Annotated[Optional[str], typer.Option(help="Dermoscopy stages with a fusion block, e.g. -2,-1.")] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Input size in pixels.")] = None,
    normalization: Annotated[Optional[str], typer.Option(
        help="Input mean/std: imagenet or inception ([-1, 1]); must suit pretrained encoders.")] = None,
    branch_features: Annotated[Optional[str], typer.Option(
        help="What the clinical and dermoscopy heads read: pre_logits (the encoder's pooled pretrained "
             "representation, conv head included) or last_stage (the last stage map, pooled).")] = None,
    fusion_features: Annotated[Optional[str], typer.Option(help=_FUSION_FEATURES_HELP)] = None,
    crop: Annotated[Optional[str], typer.Option(
        help="What of each photo is resized, here and on the device: none (all of it), center (central square) "
             "or zoom (the central 1/1.125, the test view of crop-flip-rot90).")] = None,
    drop_rate: Annotated[Optional[float], typer.Option(help="Dropout before each head.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs in all (SWA included).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch size (split over --nproc processes).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Adam weight decay.")] = None,
    warmup_epochs: Annotated[Optional[int], typer.Option(help="Linear warm-up epochs.")] = None,
    swa_epochs: Annotated[Optional[int], typer.Option(help="Average the weights of the last N epochs (0: off).")] = None,
    swa_lr: Annotated[Optional[float], typer.Option(help="Learning rate while averaging.")] = None,
    final_weights: Annotated[Optional[str], typer.Option(
        help="Without SWA, the weights kept: best (the best valid epoch's, default) or last (the last epoch's).")] = None,
    validate_every: Annotated[Optional[int], typer.Option(
        help="Score the valid split every N epochs and after the last (tiny: 4; others: 1).")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adam, adamw or sgd (momentum 0.9, Nesterov).")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="After warm-up, before SWA: cosine, linear, constant or onecycle (lr/25 up to lr over the "
             "warm-up, or the first 10 % without one, then down to lr/25/1e4).")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Training augmentation.")] = None,
    augment_policy: Annotated[Optional[str], typer.Option(
        help="fusionm4net (default), light or crop-flip-rot90 (random crops of the photo enlarged 1.125x, flips, "
             "multiples of 90 degrees, brightness x0.85-1.15; test with --crop zoom); each limit can be changed "
             "in a config file's [train] table.")] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="Cross-entropy label smoothing.")] = None,
    ema_decay: Annotated[Optional[float], typer.Option(
        help="Exponential moving average of the weights, decay per step (e.g. 0.998; 0: off): valid scores it "
             "and the run keeps it (its best or last epoch, --final-weights). Needs --swa-epochs 0.")] = None,
    mixup_alpha: Annotated[Optional[float], typer.Option(
        help="Mixup: lam ~ Beta(alpha, alpha), one draw for both photos of a case (0: off).")] = None,
    cutmix_alpha: Annotated[Optional[float], typer.Option(
        help="CutMix: lam ~ Beta(alpha, alpha), the same box in both photos (0: off); with mixup on too, each "
             "mixed batch takes one of the two with probability 0.5.")] = None,
    mix_prob: Annotated[Optional[float], typer.Option(
        help="The chance a batch is mixed at all under mixup / CutMix (default 1).")] = None,
    melanoma_sensitivity: Annotated[Optional[float], typer.Option(
        help="The valid melanoma sensitivity (0-1, default 0.9) at which the expected seven-point score's and "
             "P(MEL)'s thresholds are chosen after training; they travel to every bundle.")] = None,
    branch_weights_tta: Annotated[Optional[bool], typer.Option(
        "--branch-weights-tta/--no-branch-weights-tta",
        help="Also search the branch weights on 6-view TTA outputs of valid, stored for evaluate --tta "
             "(the model and its bundles keep the single-view weights).")] = None,
    class_weights: Annotated[Optional[bool], typer.Option("--class-weights/--no-class-weights",
                                                          help="Inverse-frequency weighted cross-entropy.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed; a CPU run with the same seed is repeatable.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader worker processes.")] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision on CUDA.")] = None,
    encoder_lr_scale: Annotated[Optional[float], typer.Option(help="Encoders learn at lr x this.")] = None,
    pretrained_clinical: Annotated[Optional[str], typer.Option(
        help=_PRETRAINED_HELP.format("clinical") + " Default: the preset's (tiny: none, others: auto).")] = None,
    pretrained_derm: Annotated[Optional[str], typer.Option(help=_PRETRAINED_HELP.format("dermoscopy"))] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Train a model; writes checkpoints, per-epoch metrics and the final weights to OUT."""
    model_flags = ModelFlags(
        clinical_encoder=clinical_encoder, derm_encoder=derm_encoder, fusion=fusion, fusion_stages=fusion_stages,
        img_size=img_size, normalization=normalization, branch_features=branch_features,
        fusion_features=fusion_features, crop=crop, drop_rate=drop_rate)
    recipe_flags = RecipeFlags(
        epochs=epochs, batch_size=batch_size, lr=lr, encoder_lr_scale=encoder_lr_scale, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, swa_epochs=swa_epochs, swa_lr=swa_lr, validate_every=validate_every,
        augment=augment, class_weights=class_weights, seed=seed, workers=workers, amp=amp,
        pretrained_clinical=pretrained_clinical, pretrained_derm=pretrained_derm, optimizer=optimizer,
        schedule=schedule, augment_policy=augment_policy, label_smoothing=label_smoothing,
        branch_weights_tta=branch_weights_tta, melanoma_sensitivity=melanoma_sensitivity, final_weights=final_weights,
        ema_decay=ema_decay, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, mix_prob=mix_prob)
    if nproc > 1:
        run_flags = {"data": data, "out": out, "preset": preset, "config": config, "resume": resume, "quiet": quiet}
        _relaunch_under_torchrun(nproc, {**run_flags, **asdict(model_flags), **asdict(recipe_flags)})
    from edgederm.presets import resolve_config
    from edgederm.training.trainer import train
    model_cfg, train_cfg = resolve_config(preset, config, model_overrides=model_flags.overrides(),
                                          train_overrides=asdict(recipe_flags))
    final = train(data, out, model_cfg, train_cfg, resume=resume, progress=not quiet)
    if final.is_file():
        _echo_final_weights(final, out / "branch_weights.json")


def _relaunch_under_torchrun(nproc: int, options: dict) -> None:
    """`edgederm train` again, one process per GPU (`python -m edgederm.training` under torchrun)."""
    import subprocess
    import sys
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "edgederm.training", *_as_flags(options)]
    raise typer.Exit(code=subprocess.run(command).returncode)


def _echo_final_weights(final: Path, branch_weights: Path) -> None:
    weights = json.loads(branch_weights.read_text())
    names = {"clinical": "W_C", "derm": "W_D", "image": "W_I", "metadata": "W_M", "fusion": "W_FU"}
    shown = ", ".join(f"{names[b]} {weights[b]:.2f}" for b in names if b in weights)
    typer.echo(f"final weights: {final}  ({shown}; validation averaged AUC {100 * weights['valid_score']:.1f})")


@app.command("evaluate")
@_one_line_errors
def evaluate_command(
    run: Annotated[Path, typer.Option(help="A run folder written by `edgederm train`.")],
    data: Annotated[Path, typer.Option(help="A release_v0 folder.")],
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "test",
    tta: Annotated[bool, typer.Option(help="Test-time augmentation: 6 views averaged.")] = False,
    tta_views: Annotated[Optional[str], typer.Option(
        help="Test-time augmentation with these views instead: six (the default of --tta), flip (original and "
             "left-right mirror) or flip4 (and top-bottom, and both): what `export --tta` builds in.")] = None,
    checkpoint: Annotated[str, typer.Option(help="model (final), best or swa.")] = "model",
    out: Annotated[Optional[Path], typer.Option(
        help="Report folder (default RUN/eval-SPLIT, with -tta for six views or -tta-VIEWS).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics.json to stdout.")] = False,
):
    """Metrics in the paper's layout for every branch; writes metrics.json and metrics.md."""
    from edgederm.evaluation.evaluate import evaluate_run
    from edgederm.evaluation.report import headline, write_report
    views = True if tta_views == "six" else (tta_views or tta)     # True: the six views
    report = evaluate_run(run, data, split=split, checkpoint=checkpoint, tta=views,
                          progress=None if as_json else _progress("evaluating", "batch"))
    out = out or run / f"eval-{split}{'' if not views else '-tta' if views is True else f'-tta-{views}'}"
    json_path, md_path = write_report(report, out)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for key, name in (("clinical", "clinical"), ("derm", "dermoscopy"), ("image", "image"), ("metadata", "metadata"),
                          ("fusion", "fusion"), ("final", "final")):
            if key in report["branches"]:
                m = report["branches"][key]
                typer.echo(f"{name:<11} AUC {100 * m['avg_auc']:.1f}  ACC {100 * m['avg_acc']:.1f}")
        if report.get("location"):
            loc = report["location"]
            typer.echo(f"{'location':<11} AUC {100 * loc['avg_auc']:.1f}  ACC {100 * loc['acc']:.1f}  "
                       "(auxiliary task, not in the averaged AUC)")
        typer.echo(f"wrote {json_path} and {md_path}")
        typer.echo(headline(report["branches"]["final"], report["params_m"]))
        if report.get("calibration"):
            from edgederm.scoring.calibration import describe_operating_point
            typer.echo(describe_operating_point(report["calibration"]["operating_point"]))


@app.command("export")
@_one_line_errors
def export_command(
    run: Annotated[Path, typer.Option(help="A finished run folder (with model.safetensors).")],
    target: Annotated[str, typer.Option(help="torch, onnx, openvino or jetson.")],
    precision: Annotated[Optional[str], typer.Option(help="Comma list: torch, onnx fp32; openvino fp32,fp16,int8; "
                                                          "jetson int8,fp16. Default: the target's first.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Release for calibration (INT8) and accuracy figures.")] = None,
    out: Annotated[Path, typer.Option(help="Folder that receives the bundles.")] = Path("exports"),
    max_auc_drop: Annotated[Optional[float], typer.Option(help=(
        "INT8 gate margin on the valid split, AUC points (default 1.0): plain PTQ first, then quantization-aware "
        "fine-tuning, then the most sensitive blocks kept in float, then (openvino, if asked) NNCF accuracy "
        "control; no INT8 bundle when none passes."))] = None,
    max_flip_rate: Annotated[Optional[float], typer.Option(help=(
        "INT8 decision limit on the valid split: largest share of cases (percent, default 2) whose top "
        "diagnosis or seven-point reading may differ from FP32's. 100 turns it off."))] = None,
    accuracy_control: Annotated[bool, typer.Option(help=(
        "OpenVINO INT8: when no set of float blocks passes, try NNCF accuracy control with agreement as its "
        "metric (minutes on a 2-core CPU)."))] = False,
    qat: Annotated[bool, typer.Option(help=(
        "INT8: when plain PTQ fails, fine-tune the quantized network on the train split to agree with the FP32 "
        "model (distillation; one training serves every target of the command)."))] = True,
    qat_epochs: Annotated[Optional[int], typer.Option(help="Epochs of that fine-tuning (default 3).")] = None,
    qat_minutes: Annotated[Optional[float], typer.Option(help=(
        "A time budget for that fine-tuning: no epoch starts that would end past it; the time it will take is "
        "said after its first steps."))] = None,
    int8_method: Annotated[str, typer.Option(help=(
        "INT8: search (default: the attempts above in order, the first that passes), or one attempt on purpose: "
        "ptq, qat or blocks (the most sensitive blocks in float). Which attempt a search reaches depends on the "
        "CPU; a forced one is still gated, and refused when it fails."))] = "search",
    calibration_cases: Annotated[Optional[int], typer.Option(help="Calibration cases (default 300, or the whole "
                                                                   "split if smaller).")] = None,
    calibration_split: Annotated[str, typer.Option(help="Split the calibration cases come from.")] = "train",
    eval_split: Annotated[str, typer.Option(help="Split scored for the manifest's accuracy figures ('none': skip).")] = "test",
    seed: Annotated[int, typer.Option(help="Seed for the calibration-case choice.")] = 0,
    tta: Annotated[Optional[str], typer.Option(help=(
        "Build test-time augmentation into the graph: flip (original and left-right mirror) or flip4 (and "
        "top-bottom, and both); one call per case, the views' probabilities averaged; the INT8 variants are "
        "gated against this averaged FP32 model, and the bundle is named RUN-TARGET-PRECISION-tta-VIEWS."))] = None,
    force: Annotated[bool, typer.Option(help="Replace bundles that exist.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the written bundles' manifests as JSON.")] = False,
):
    """Export a trained run: one bundle per (target, precision) with a verified manifest."""
    from edgederm.export.exporter import ExportRequest, export
    from edgederm.runtime.bundle import read_manifest
    written = export(ExportRequest(run=run, target=target, precisions=precision, data=data, out=out,
                                   max_auc_drop=max_auc_drop, max_flip_rate=max_flip_rate,
                                   accuracy_control=accuracy_control, qat=qat, qat_epochs=qat_epochs,
                                   qat_minutes=qat_minutes, int8_method=int8_method,
                                   calibration_cases=calibration_cases,
                                   calibration_split=calibration_split,
                                   eval_split=None if eval_split == "none" else eval_split, seed=seed,
                                   tta=tta, force=force), log=lambda m: typer.echo(m, err=as_json))
    if as_json:
        typer.echo(json.dumps({str(p): read_manifest(p) for p in written}, indent=2))


@engine_app.command("build")
@_one_line_errors
def engine_build_command(
    bundle: Annotated[Path, typer.Option(help="A jetson bundle folder.")],
    precision: Annotated[Optional[str], typer.Option(help="int8 or fp16 (default: the bundle's).")] = None,
    workspace_mb: Annotated[int, typer.Option(help="TensorRT builder workspace limit, MiB.")] = 1024,
    max_batch: Annotated[int, typer.Option(help="Largest batch the engine accepts.")] = 8,
    ungated: Annotated[bool, typer.Option(help="Build an FP16 graph that failed its gate at export or was never "
                                               "judged (exported without --data); the engine is marked not "
                                               "gated.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest's engine record as JSON.")] = False,
):
    """Build a TensorRT engine on this device from what the export's gate approved (docs/device.md); adds it,
    its build settings and the device facts to the manifest."""
    from edgederm.runtime.bundle import read_manifest
    from edgederm.runtime.engine import build_engine
    path = build_engine(bundle, precision=precision, workspace_mb=workspace_mb, max_batch=max_batch,
                        log=lambda m: typer.echo(m, err=as_json), ungated=ungated)
    engine = read_manifest(bundle)["engine"]
    typer.echo(json.dumps(engine, indent=2) if as_json else f"wrote {path}: {engine['settings']['label']}")


# Long by its option declarations (typer reads options from the signature) and its two input forms (a pair, a CSV).
@app.command("diagnose")
@_one_line_errors
def diagnose_command(
    bundle: Annotated[Path, typer.Option(help="An exported bundle folder.")],
    clinical: Annotated[Optional[Path], typer.Option(help="The clinical photo.")] = None,
    derm: Annotated[Optional[Path], typer.Option(help="The dermoscopy photo (not for a clinical-only bundle).")] = None,
    sex: Annotated[Optional[str], typer.Option(help=f"The patient's sex, for a bundle that takes metadata "
                                                    f"({', '.join(L.METADATA_FIELDS['sex'])}).")] = None,
    location: Annotated[Optional[str], typer.Option(help=f"The lesion's body location, for a bundle that takes "
                                                         f"metadata ({', '.join(L.METADATA_FIELDS['location'])}).")] = None,
    elevation: Annotated[Optional[str], typer.Option(help=f"The lesion's elevation, for a bundle that takes metadata "
                                                          f"({', '.join(L.METADATA_FIELDS['elevation'])}).")] = None,
    pairs: Annotated[Optional[Path], typer.Option(help="CSV with a column per photo the bundle takes (clinical, "
                                                       "derm), per metadata field when it takes them (sex, "
                                                       "location, elevation) and optional id.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Results CSV for --pairs.")] = None,
    device: Annotated[str, typer.Option(help="OpenVINO device: CPU, GPU, NPU or AUTO.")] = "CPU",
    backend: Annotated[Optional[str], typer.Option(help="Override the bundle's backend (e.g. onnxruntime "
                                                        "for a jetson bundle's graphs).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for machines.")] = False,
):
    """Offline decision support: the eight tasks, the seven-point score and its reading.

    A two-photo bundle takes --clinical and --derm; a clinical-only bundle --clinical alone; a bundle with
    patient metadata (jif-mmfa) also --sex, --location and --elevation."""
    from edgederm.runtime import load_bundle
    from edgederm.runtime.bundle import read_manifest
    from edgederm.runtime.diagnose import case_items, diagnose_pairs, format_text, input_fields
    # what the bundle takes, from its manifest, before any model is loaded
    input_names = tuple(i["name"] for i in read_manifest(bundle, verify=False)["inputs"])
    needed = input_fields(input_names)
    given = {"clinical": clinical, "derm": derm, "sex": sex, "location": location, "elevation": elevation}
    metadata = {f: given[f] for f in L.METADATA_FIELDS if f in needed}
    if pairs is None:
        missing = [f"--{f}" for f in needed if given[f] is None]
        extra = [f"--{f}" for f, v in given.items() if v is not None and f not in needed]
        if missing or extra:
            what = " and ".join(f"--{f}" for f in needed)
            allowed = "; ".join(f"--{f}: {', '.join(L.METADATA_FIELDS[f])}" for f in metadata if given[f] is None)
            raise typer.BadParameter(f"{bundle.name} takes {what} (or --pairs CSV)"
                                     + (f"; {', '.join(extra)} is not one of its inputs" if extra else "")
                                     + (f" (allowed {allowed})" if allowed else ""))
        for f in metadata:      # an unknown value fails now, before the model loads
            try:
                L.metadata_index(metadata, f)
            except LabelError as e:
                raise typer.BadParameter(f"--{e}") from None
    if pairs is not None:
        beside = [f"--{f}" for f, v in given.items() if v is not None]
        if beside:    # the CSV gives every case its photos and fields; a flag beside it would be ignored
            raise typer.BadParameter(f"--pairs reads each case's photos and fields from {pairs.name}; "
                                     f"{', '.join(beside)} cannot be given beside it")
        if out is None:
            raise typer.BadParameter("--pairs needs --out for the results CSV")
    predictor = load_bundle(bundle, device=device, backend=backend)
    if pairs is not None:
        written, failures = diagnose_pairs(predictor, pairs, out, progress=None if as_json else _progress("cases", "case"))
        for failure in failures:
            typer.echo(f"failed: {failure}", err=True)
        summary = {"rows": written, "failed": len(failures), "out": str(out)}
        typer.echo(json.dumps(summary) if as_json else f"wrote {written} rows to {out} ({len(failures)} failed)")
        if failures:
            raise typer.Exit(code=1)
        return
    prediction = predictor.predict(*case_items(input_names, given))
    if as_json:
        typer.echo(json.dumps({"clinical": str(clinical), "derm": None if derm is None else str(derm),
                               "metadata": metadata or None, "bundle": str(bundle),
                               "backend": predictor.backend, **prediction.to_dict()}, indent=2))
    else:
        typer.echo(format_text(prediction, str(clinical), None if derm is None else str(derm), predictor.name, metadata))


@app.command("serve")
@_one_line_errors
def serve_command(
    bundle: Annotated[Path, typer.Option(help="An exported bundle folder: the model that answers.")],
    host: Annotated[str, typer.Option(help="Address to listen on. 127.0.0.1: this machine only, no code; "
                                           "0.0.0.0 or a LAN address: tablets on the clinic network too, "
                                           "behind an access code.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Where the cases are kept (SQLite + photo copies).")] = Path(
        "edgederm-clinic"),
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload (both photos together), MB.")] = 25.0,
    device: Annotated[str, typer.Option(help="OpenVINO device: CPU, GPU, NPU or AUTO.")] = "CPU",
    backend: Annotated[Optional[str], typer.Option(help="Override the bundle's backend (e.g. onnxruntime "
                                                        "for a jetson bundle's graphs).")] = None,
    reset_access_code: Annotated[bool, typer.Option(help="Make and print a new access code (LAN only); "
                                                         "the old one stops working.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the start-up facts as one JSON line.")] = False,
):
    """The clinic app: an offline web page for two photos, the result, and the day's cases (CSV).

    On 127.0.0.1 (default) only this machine can open it and no code is asked. With --host 0.0.0.0 (or a LAN
    address) tablets on the clinic's network can too: an access code is then required, printed once at first start."""
    from edgederm.serve.server import access_note, build_clinic, serve
    clinic, new_code = build_clinic(bundle, data_dir, host=host, max_upload_mb=max_upload_mb, device=device,
                                    backend=backend, reset_access_code=reset_access_code)
    if as_json:
        typer.echo(json.dumps({"url": f"http://{host}:{port}/", "bundle": clinic.bundle.name,
                               "precision": clinic.bundle.precision, "bundle_sha256": clinic.bundle.sha256,
                               "data_dir": str(data_dir), "access_code_required": clinic.access is not None,
                               "new_access_code": new_code}))
    elif (note := access_note(clinic, new_code)) is not None:
        typer.echo(note)
    serve(clinic, host, port, log=(lambda m: None) if as_json else typer.echo)


@app.command("bench")
@_one_line_errors
def bench_command(
    bundle: Annotated[list[str], typer.Option(help="A bundle folder (repeat). PATH@onnxruntime runs a jetson "
                                                   "bundle's graph in onnxruntime; PATH+reduced (or +full) runs "
                                                   "it with that JPEG decode rule.")],
    reference: Annotated[Optional[str], typer.Option(help="The FP32 bundle the gate compares against.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Release for the accuracy figures.")] = None,
    split: Annotated[str, typer.Option(help="Split scored for accuracy.")] = "test",
    batch: Annotated[str, typer.Option(help="Batch sizes, comma separated.")] = "1",
    warmup: Annotated[int, typer.Option(help="Untimed runs before timing.")] = 10,
    runs: Annotated[int, typer.Option(help="Timed runs per batch size.")] = 50,
    rounds: Annotated[int, typer.Option(help="Time every variant N times round-robin and pool the runs "
                                             "(steadier figures on a busy machine).")] = 1,
    photos: Annotated[Optional[list[Path]], typer.Option(
        help="A folder of photos (repeat) to time end to end: consecutive photos form pairs.")] = None,
    e2e_runs: Annotated[int, typer.Option(help="Timed pairs per photo set, end to end.")] = 10,
    max_auc_drop: Annotated[float, typer.Option(help=_MARGIN_HELP)] = 1.0,
    max_flip_rate: Annotated[float, typer.Option(help=_FLIP_HELP)] = DEFAULT_MAX_FLIP_RATE,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples of the gate.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the gate's bootstrap: same seed, same verdict.")] = 0,
    device: Annotated[str, typer.Option(help="OpenVINO device: CPU, GPU, NPU or AUTO.")] = "CPU",
    report: Annotated[Path, typer.Option(help="Folder for report.json, report.md and report.html.")] = Path("reports/bench"),
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json to stdout.")] = False,
):
    """Latency, memory and accuracy of bundles side by side; exit 1 when a variant fails the FP32 gate."""
    from edgederm.benchmarks.bench import run_bench
    from edgederm.benchmarks.report import summary_lines, write_reports
    from edgederm.scoring.gate import GateSettings
    try:
        batch_sizes = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise typer.BadParameter(f"--batch {batch!r}: give comma-separated integers") from None
    gate = GateSettings(max_auc_drop=max_auc_drop, resamples=resamples, seed=seed, max_flip_rate=max_flip_rate)
    result = run_bench(bundle, reference, data, split, batch_sizes, warmup, runs, gate, device,
                       progress=None if as_json else _progress("benchmarking", "variant"), rounds=rounds,
                       photos=photos or [], e2e_runs=e2e_runs)
    paths = write_reports(result, report)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo("\n".join(summary_lines(result)))
        typer.echo(f"report: {paths['html']}")
    failed = [r for r in result["variants"] if r["verdict"] == "fail"]
    if failed:
        raise typer.Exit(code=1)


@app.command("quickstart")
@_one_line_errors
def quickstart_command(
    out: Annotated[Path, typer.Option(help="Working folder; a second run reuses finished steps.")] = Path("quickstart"),
    cases: Annotated[int, typer.Option(help="Synthetic cases (the valid split twice its real share: a steadier "
                                            "INT8 gate).")] = 720,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (default: the tiny recipe's 16).")] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Input size (default: the tiny preset's 128).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Training batch size (default: the tiny recipe's 24).")] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per variant in the bench.")] = 50,
    max_auc_drop: Annotated[float, typer.Option(help=_MARGIN_HELP)] = 1.0,
    max_flip_rate: Annotated[float, typer.Option(help=_FLIP_HELP)] = DEFAULT_MAX_FLIP_RATE,
    strict: Annotated[bool, typer.Option(help="Exit 1 when any variant fails the gate (default: only when a "
                                              "stage breaks).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for data, training, calibration and the gate.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes drawing the synthetic images.")] = min(2, os.cpu_count() or 1),
    as_json: Annotated[bool, typer.Option("--json", help="Print the bench report as JSON at the end.")] = False,
):
    """The whole pipeline on the synthetic default: data, training, evaluation, export, bench.

    Exits 0 when every stage completed and the gate ran, whatever its verdicts (they are printed);
    1 when a stage broke, or with --strict when a variant fails the gate."""
    import time
    started = time.perf_counter()      # before the imports below (torch, OpenVINO, ...): the user waits for them too
    from edgederm.benchmarks.report import summary_lines
    from edgederm.quickstart import QuickstartOptions, quickstart
    result = quickstart(QuickstartOptions(out=out, cases=cases, epochs=epochs, img_size=img_size,
                                          batch_size=batch_size, runs=runs, max_auc_drop=max_auc_drop,
                                          max_flip_rate=max_flip_rate, seed=seed, workers=workers),
                        log=lambda m: typer.echo(m, err=as_json), started=started)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo("\n" + "\n".join(summary_lines(result)))
        split = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result["stage_seconds"].items())
        typer.echo(f"done in {result['minutes']:.1f} min ({split}); report: {result['report_paths']['html']}")
    broken = [r["name"] for r in result["variants"] if r["status"] not in ("ok", "refused")]
    if broken:
        typer.echo(f"error: a stage broke: {', '.join(broken)} could not be benchmarked", err=True)
        raise typer.Exit(code=1)
    if strict and not result["gate_passed"]:
        raise typer.Exit(code=1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
