"""Quantization-aware fine-tuning distilled from the FP32 model: the INT8 search's attempt after plain
post-training quantization (export/int8_gate.py says why before the blocks in float).

Post-training quantization rounds every weight and activation once and hopes the decisions survive;
on EdgeDerm's models most of the decisions it changes are near-ties. Here the quantized network is
trained to give the FP32 model's answers instead:

1. NNCF 3 for PyTorch inserts the quantizers (`nncf.quantize` on the torch model) from the same
   calibration cases, with the same model type as the OpenVINO PTQ (transformer when the model has
   attention). The probability tail (softmax and branch-weighted average) is outside the network's
   forward, so it stays in float as in every other INT8 graph.
2. The student fine-tunes on the *train* split (never valid or test: the gate judges it on valid) for
   `QatSettings.epochs`; the frozen FP32 model is the teacher. Loss, per batch:
       distill_weight * T^2 * sum over branches and the eight tasks of KL(teacher_T || student_T)
     + fused_weight   * sum over the eight tasks of KL(teacher P_FI || student P_FI)
     + task_weight    * the training loss (cross-entropy on the labels)
     + score_weight   * mean (expected seven-point score of student P_FI - of teacher P_FI)^2
   The second term is on what the device decides from (P_FI); the first keeps every branch close,
   since the branches are what P_FI averages. Rostamizadeh et al., "Churn reduction via
   distillation" (ICLR 2022, arXiv 2106.02654): distilling from the reference model is training
   under a constraint on disagreement with it.
3. The student is exported twice: OpenVINO IR (`ov.convert_model` on the torch model: NNCF's
   FakeQuantize ops as they are) and a Q/DQ ONNX graph for TensorRT (`nncf.strip` to torch's
   FakeQuantize at every hook, shared quantizers included (`native_strip`), then the TorchScript
   exporter: QuantizeLinear / DequantizeLinear pairs, opset 17), put in TensorRT's form by
   `tensorrt_export.tensorrt_form`.

Choices, and why:
- One student serves both targets: every quantizer symmetric and signed int8 with zero point 0
  (TensorRT takes nothing else; OpenVINO runs it as well), so an export pass trains once. The
  OpenVINO and Jetson workers share it through a lock in the pass's scratch folder (`qat_graphs`).
- NNCF's overflow fix (weights on 7 bits) on every layer by default. CPUs without VNNI (AVX2)
  multiply int8 with vpmaddubsw, whose int16 pair sums can saturate with 8-bit weights (measured on
  the quickstart model on an AMD EPYC (AVX2): the torch student and its OpenVINO IR differed by up
  to 0.19 without the fix, 0.02 with it). A CPU with VNNI or AMX (int32 sums) needs it on the first
  layer at most, as NNCF's OpenVINO PTQ (the search's first attempt) has it: `overflow_fix="auto"`
  chooses so by the CPU that trains and gates the student (`overflow_fix_for`). On every layer it
  halves every weight's precision: on the real `edge` model NNCF's PTQ of the student, before any
  fine-tuning, disagreed with FP32 by a mean |dp| of 0.034 on the 203 valid cases with 14 diagnosis
  flips, against 0.018 and 8 flips with the first layer only (0.017 and 9 with no fix). It is not
  the default yet: on the real model no QAT setting passes the gate either way, and on the
  quickstart model (AMX Xeon) `auto` turned 2 test diagnosis flips of 236 into 3, one more than the
  quickstart's test allows (two spare flips under the limit). A bundle exported on a VNNI CPU with
  `auto` and run on an AVX2 one may compute otherwise than it was gated, as any NNCF PTQ bundle
  may: `edgederm bench` judges it again on the device.
- A light encoder stays in float (`light_encoders`: under 10 % of the model's FLOPs). Measured on the
  quickstart model (NNCF's 8-bit PTQ in torch, 121 valid cases): its MobileNetV3-Small, 3 % of the
  FLOPs, causes most of the disagreement (mean |probability difference| 0.0051 with it quantized,
  0.0020 with it in float; the dermoscopy encoder in float: 0.0046), and OpenVINO INT8 with it in
  float ran as fast as with it quantized (depthwise convolutions gain little from int8). Fine-tuning
  alone did not remove it: with every encoder quantized the student's disagreement stayed near
  0.006 on the train split itself after four epochs.
- No task loss by default (`task_weight` 0): the labels pull the student toward what the teacher
  should have answered, not toward what it answers, and the gate measures the latter. On the
  quickstart model the weighted cross-entropy was 80 % of the loss at weight 0.05 and the student
  disagreed more on valid than without it (mean |probability difference| 0.0073 against 0.0065).
- Batches of 8, three epochs, Adam at 3e-5: the train split is small (245 cases for the quickstart),
  so small batches give the steps; a larger rate (1e-4) first moved the student away from the teacher.
- The student runs in eval mode while it trains: BatchNorm statistics and dropout as the teacher
  has them, so the fine-tuning spends itself on the rounding, not on relearning the data.
- No augmentation by default: the student learns to agree on photos as the device sees them.
- Three settings are off by default and there to be measured on a real model (benchmarks/dev/qat_curves.py
  judges each student with the export's gate): `mix_alpha` distils on mixup of the pairs, teacher and student
  on the same mixture ("function matching", Beyer et al., CVPR 2022: the student learns the teacher's function
  between the train cases, where new cases' near ties lie); `score_weight` adds the squared difference of the
  seven-point expected score with the run's fitted temperatures (the reading the device refers by, which the
  per-task KL weighs only indirectly); `signed=False` keeps NNCF's unsigned ranges for activations that are
  never negative (one bit more for them; for OpenVINO only: TensorRT takes signed int8 alone). On the real
  `edge` model (203 valid cases; benchmarks/results/real-qat-gate.md) none passed: mixup took the diagnosis
  flips from 5 to 3 and left the seven-point flips at 7, the score term helped nothing (5 and 8), unsigned
  activations came closest (valid mean |dp| 0.0140 against 0.0155; 5 and 6 flips). So they stay off.
"""
from __future__ import annotations

import copy
import fcntl
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from edgederm.calibration.selection import CalibrationSet
from edgederm.errors import ConfigError
from edgederm.models.tta import NO_TTA


# NNCF's OverflowFix values: 7-bit weights on every layer, on the first only, or nowhere; "auto" picks by this CPU
OVERFLOW_FIXES = ("auto", "enable", "first_layer_only", "disable")
# int8 dot products with int32 sums (no int16 saturation to fix); /proc/cpuinfo's names
INT32_DOT_PRODUCTS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class QatSettings:
    """The knobs, recorded in the manifest (the QAT attempt's `qat` in `int8_gate`). Defaults measured on the
    quickstart model; the module docstring says why each."""
    epochs: int = 3
    lr: float = 3e-5                  # Adam, every parameter (weights and quantizer scales)
    temperature: float = 2.0
    distill_weight: float = 1.0       # branch logits, temperature-scaled KL
    fused_weight: float = 10.0        # deployed P_FI, KL
    task_weight: float = 0.0          # cross-entropy on the labels (module docstring: why 0 by default)
    batch_size: int = 8               # small batches: more steps for the same minutes
    light_share: float = 0.1          # an encoder under this share of the model's FLOPs stays in float
    augment: bool = False
    seed: int = 0
    scale_lr: float | None = None     # Adam's rate for the quantizers' scales (None: `lr`, one rate for both)
    minutes: float | None = None      # a budget: no epoch starts that would end past it (None: every epoch)
    overflow_fix: str = "enable"      # NNCF's OverflowFix, or "auto" (`overflow_fix_for`; module docstring: why)
    mix_alpha: float = 0.0            # distil on mixup of the pairs, lam ~ Beta(a, a) (0: the photos as they are)
    score_weight: float = 0.0         # squared difference of the seven-point expected score (the device's reading)
    signed: bool = True               # every quantizer signed, as TensorRT takes them (False: OpenVINO only)

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError(f"--qat-epochs {self.epochs}: at least 1 (use --no-qat to skip QAT)")
        if self.minutes is not None and self.minutes <= 0:
            raise ConfigError(f"--qat-minutes {self.minutes:g}: a budget must be positive (use --no-qat to skip QAT)")
        if self.overflow_fix not in OVERFLOW_FIXES:
            raise ConfigError(f"QAT: overflow fix {self.overflow_fix!r}: not one of {', '.join(OVERFLOW_FIXES)}")
        if self.mix_alpha < 0:
            raise ConfigError(f"QAT: mixup alpha {self.mix_alpha:g}: must be 0 (off) or positive")
        if self.mix_alpha > 0 and self.task_weight > 0:
            raise ConfigError("QAT: mixup inputs have no labels of their own: a task loss needs mix_alpha 0")
        if self.scale_lr is not None and self.scale_lr <= 0:
            raise ConfigError("QAT: the quantizer scales' learning rate must be positive")
        if self.lr <= 0 or self.temperature <= 0 or min(self.distill_weight, self.fused_weight, self.task_weight,
                                                        self.score_weight) < 0:
            raise ConfigError("QAT: the learning rate and temperature must be positive and the loss weights "
                              "non-negative")


@dataclass
class QatJob:
    """What a bundle worker needs to train the student: plain data, so it pickles into the worker."""
    weights: Path                     # the run's FP32 weights: the teacher and the student's start
    data: Path                        # the release; the train split is used
    workdir: Path                     # shared by the pass's targets: one training serves them all
    settings: QatSettings = field(default_factory=QatSettings)
    views: tuple[str, ...] = NO_TTA          # test-time views the exported graphs average (edgederm.models.tta)
    temperatures: dict[str, float] | None = None   # the run's fitted temperatures: the seven-point score as read


@dataclass
class QatGraphs:
    openvino_xml: Path                # FakeQuantize IR, weights still float (openvino_export.finalize stores int8)
    qdq_onnx: Path                    # TensorRT form
    record: dict                      # the manifest's int8_gate.qat


def check_can_train(run: Path, data: Path) -> None:
    """QAT fine-tunes a training run's model on the release's train split: refuse early, in one line,
    when `run` is an exported bundle (its model is a deployed artifact, not a run to train from) or the
    train split is empty."""
    from edgederm.data.release import read_release
    from edgederm.runtime.bundle import MANIFEST
    if (run / MANIFEST).is_file():
        raise ConfigError(f"{run}: an exported bundle, not a training run: quantization-aware fine-tuning "
                          "trains from the run's folder (--run RUN, or --no-qat)")
    if not read_release(data).split("train"):
        raise ConfigError(f"{data}: the train split is empty: quantization-aware fine-tuning trains on it "
                          "(--no-qat searches without it)")


def qat_graphs(job: QatJob, calib: CalibrationSet, transformer: bool, log: Callable[[str], None]) -> QatGraphs:
    """The student's two graphs, trained once per export pass: the first worker to ask trains, under a
    lock, and the others read what it wrote."""
    job.workdir.mkdir(parents=True, exist_ok=True)
    record_path = job.workdir / "qat.json"
    with open(job.workdir / "qat.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record_path.is_file():
            record = _train_and_export(job, calib, transformer, log)
            tmp = record_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(record_path)
        else:
            log(f"  QAT: reusing the student trained for this export ({job.workdir})")
    return QatGraphs(job.workdir / "openvino" / "model.xml", job.workdir / "model.int8.onnx",
                     json.loads(record_path.read_text()))


def _train_and_export(job: QatJob, calib: CalibrationSet, transformer: bool, log: Callable[[str], None]) -> dict:
    student, record = train_student(job, calib, transformer, log)
    export_student(student, calib, job.workdir, job.views)
    return record


def train_student(job: QatJob, calib: CalibrationSet, transformer: bool, log: Callable[[str], None]
                  ) -> tuple[object, dict]:
    """The quantized student fine-tuned toward the run's FP32 model, and its record (the manifest's
    int8_gate.qat)."""
    import torch

    from edgederm.models.io import load_model
    from edgederm.runtime.bundle import sha256_file

    started = time.perf_counter()
    s = job.settings
    torch.manual_seed(s.seed)
    teacher = load_model(job.weights).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    in_float = light_encoders(teacher, s.light_share)
    overflow_fix = overflow_fix_for(s.overflow_fix)
    student = quantized_student(teacher, calib, transformer, in_float, overflow_fix, s.signed)
    loader = _train_loader(job, teacher.cfg)
    log(f"  QAT: {s.epochs} epoch(s) on {len(loader.dataset)} train cases, teacher {job.weights.name} (frozen)"
        + (f"; in float: {', '.join(in_float)} (under {s.light_share:.0%} of the FLOPs)" if in_float else ""))
    monitor = Monitor.of(job, teacher)
    start = monitor.measure(student)      # where the fine-tuning starts: the quantized student as calibrated
    log(f"  QAT start: {Monitor.line(start)}")
    epochs: list[dict] = []
    history = distill(student, teacher, loader, s, log, monitor=monitor, epochs=epochs, temperatures=job.temperatures)
    return student, {"tool": "nncf.quantize (PyTorch), fine-tuned with distillation", "split": "train",
                     "cases": len(loader.dataset), "settings": asdict(s), "loss_per_epoch": history,
                     "start": start, "epochs": epochs, "monitored": monitor.describe(),
                     "quantizers": "symmetric int8, zero point 0, "
                                   + ("every quantizer signed" if s.signed else "unsigned where never negative")
                                   + f", overflow fix {overflow_fix}"
                                   + (" (auto, by this CPU)" if s.overflow_fix == "auto" else ""),
                     "in_float": list(in_float), "teacher_sha256": sha256_file(job.weights),
                     "minutes": round((time.perf_counter() - started) / 60, 2)}


def export_student(student, calib: CalibrationSet, workdir: Path, views: tuple[str, ...] = NO_TTA) -> QatGraphs:
    """The student's OpenVINO IR (`workdir/openvino/model.xml`) and Q/DQ graph (`workdir/model.int8.onnx`);
    the record is left empty (train_student's)."""
    import openvino as ov
    import torch
    example = tuple(torch.from_numpy(x[:2]) for x in calib.inputs)
    (workdir / "openvino").mkdir(parents=True, exist_ok=True)
    # trained on single views; the graphs average the bundle's views as the FP32 reference does
    ov.save_model(to_openvino(student, example, views), str(workdir / "openvino" / "model.xml"),
                  compress_to_fp16=False)
    to_qdq_onnx(student, example, workdir / "model.int8.onnx", views)
    return QatGraphs(workdir / "openvino" / "model.xml", workdir / "model.int8.onnx", {})


def overflow_fix_for(setting: str, cpu_flags: set[str] | None = None) -> str:
    """NNCF's OverflowFix value for `setting`: "auto" is the first layer only where this CPU sums int8 products in
    int32 (VNNI, AMX), every layer where it does not (AVX2: int16 pair sums that 8-bit weights can saturate, and
    the gate judges the OpenVINO graph on this CPU)."""
    if setting != "auto":
        return setting
    if cpu_flags is None:
        from edgederm.benchmarks.host import host_facts
        cpu_flags = set(host_facts()["int8_instructions"])
    return "first_layer_only" if cpu_flags & set(INT32_DOT_PRODUCTS) else "enable"


def light_encoders(model, share: float) -> tuple[str, ...]:
    """The encoders (attribute names) that cost under `share` of the model's FLOPs: the tiny preset's
    MobileNetV3-Small (3 % of its FLOPs), not `edge`'s EfficientNet-Lite0 (42 %). A shared encoder is
    counted once, in the dermoscopy row, so it is never light."""
    from edgederm.models.summary import COMPONENTS, summarize
    summary = summarize(model)
    total = summary["total"]["gflops"]
    return tuple(COMPONENTS[row["component"]] for row in summary["rows"]
                 if COMPONENTS.get(row["component"], "").endswith("_encoder") and 0 < row["gflops"] <= share * total)


def quantized_student(teacher, calib: CalibrationSet, transformer: bool, in_float: tuple[str, ...] = (),
                      overflow_fix: str = "enable", signed: bool = True):
    """A copy of `teacher` with NNCF's quantizers, calibrated on `calib`, every quantizer signed (`signed`; else
    NNCF's unsigned ranges for activations that are never negative); the modules `in_float` (attribute names)
    keep no quantizer; `overflow_fix`: NNCF's OverflowFix value."""
    import nncf
    import torch
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import SymmetricQuantizer

    # batches of 8: statistics need no more than the cases, and batch 1 costs seconds per hundred cases
    nncf.set_log_level(logging.WARNING)     # it lists every node it leaves unquantized, hundreds of lines
    batches = [tuple(torch.from_numpy(x[i:i + 8]) for x in calib.inputs) for i in range(0, len(calib), 8)]
    student = copy.deepcopy(teacher)
    for parameter in student.parameters():      # the teacher is frozen; its copy is what trains
        parameter.requires_grad_(True)
    student = nncf.quantize(
        student, nncf.Dataset(batches), subset_size=len(batches),
        preset=nncf.QuantizationPreset.PERFORMANCE,       # symmetric weights and activations
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
        ignored_scope=nncf.IgnoredScope(patterns=[f"{m}/.*" for m in in_float]) if in_float else None,
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix)))
    # NNCF gives activations that are never negative (after ReLU) unsigned ranges; TensorRT takes signed
    # int8 only. One bit of their range is lost, and the fine-tuning retrains their scales around it.
    for _, quantizer in get_hook_storage(student).named_hooks():
        if signed and isinstance(quantizer, SymmetricQuantizer) and not quantizer.signed:
            quantizer.signed = True
    return student


def _train_loader(job: QatJob, cfg):
    import torch

    from edgederm.augment import policy
    from edgederm.data.release import read_release
    from edgederm.data.torch_dataset import PairDataset

    cases = read_release(job.data).split("train")
    if not cases:
        raise ConfigError(f"{job.data}: the train split is empty: quantization-aware fine-tuning trains on it")
    dataset = PairDataset.for_model(cases, cfg, policy("fusionm4net") if job.settings.augment else None)
    generator = torch.Generator().manual_seed(job.settings.seed)
    return torch.utils.data.DataLoader(dataset, batch_size=job.settings.batch_size, shuffle=True,
                                       generator=generator, num_workers=0)


def seven_point_score(p_fi, temperatures: dict[str, float] | None = None):
    """The expected seven-point score of N x 24 probabilities (torch), each criterion's task rescaled by its
    fitted temperature as the device reads it (edgederm.scoring.calibration)."""
    import torch

    from edgederm import labels as L
    score = 0.0
    for task, cls, points in L.SEVEN_POINT_CRITERIA:
        probs = p_fi[:, L.TASK_SLICES[task]]
        if temperatures and task in temperatures:
            probs = torch.softmax(probs.clamp_min(1e-8).log() / temperatures[task], 1)
        score = score + points * probs[:, L.class_index(task, cls)]
    return score


def distillation_loss(student_out: dict, teacher_out: dict, targets, weights, s: QatSettings,
                      branches: tuple[str, ...], temperatures: dict[str, float] | None = None):
    """The loss of the module docstring; `weights` are the model's branch weights (P_FI)."""
    import torch.nn.functional as F

    from edgederm.models.heads import fused_probabilities, split_tasks
    from edgederm.training.loss import multitask_loss

    t = s.temperature
    distill = 0.0
    for branch in branches:
        for student_logits, teacher_logits in zip(split_tasks(student_out[branch]).values(),
                                                  split_tasks(teacher_out[branch]).values()):
            distill = distill + t * t * F.kl_div(F.log_softmax(student_logits / t, 1),
                                                 F.log_softmax(teacher_logits / t, 1),
                                                 log_target=True, reduction="batchmean")
    fused = 0.0
    student_fi = fused_probabilities(student_out, weights, branches)
    teacher_fi = fused_probabilities(teacher_out, weights, branches)
    for p_s, p_t in zip(split_tasks(student_fi).values(), split_tasks(teacher_fi).values()):
        fused = fused + F.kl_div(p_s.clamp_min(1e-8).log(), p_t, reduction="batchmean")
    task = multitask_loss({b: student_out[b] for b in branches}, targets) if s.task_weight else 0.0
    score = 0.0
    if s.score_weight:
        score = (seven_point_score(student_fi, temperatures) - seven_point_score(teacher_fi, temperatures)).pow(2).mean()
    return s.distill_weight * distill + s.fused_weight * fused + s.task_weight * task + s.score_weight * score


MONITOR_CASES = 64     # fixed train and valid cases the student is measured on after every epoch


@dataclass
class Monitor:
    """How far the student is from its teacher after each epoch, on fixed cases of train (what it learns from) and
    of valid (what the gate will judge; watched only, never used to choose): the P_FI diagnosis flip rate and the
    mean |P_FI student - P_FI teacher|. The loss alone cannot say whether the student is moving toward the teacher:
    on the real `edge` model it swung between epochs while the disagreement grew."""
    inputs: dict[str, tuple]           # split -> the cases' input arrays
    reference: dict[str, object]       # split -> the teacher's P_FI on them

    @classmethod
    def of(cls, job: QatJob, teacher) -> "Monitor":
        import numpy as np

        from edgederm.data.inputs import load_arrays
        from edgederm.data.release import read_release
        from edgederm.export.onnx_export import run_torch
        release = read_release(job.data)
        inputs = {}
        for split in ("train", "valid"):
            cases = release.split(split)
            if cases:
                chosen = np.random.default_rng(job.settings.seed).permutation(len(cases))[:MONITOR_CASES]
                inputs[split] = load_arrays([cases[i] for i in sorted(chosen)], teacher.cfg.preprocess(),
                                            teacher.input_names)
        return cls(inputs, {split: run_torch(teacher, *arrays) for split, arrays in inputs.items()})

    def measure(self, student) -> dict:
        from edgederm import labels as L
        from edgederm.export.onnx_export import run_torch
        diagnosis = slice(0, L.NUM_CLASSES[0])
        found = {}
        for split, reference in self.reference.items():
            probabilities = run_torch(student, *self.inputs[split])
            flips = (probabilities[:, diagnosis].argmax(1) != reference[:, diagnosis].argmax(1)).mean()
            found[split] = {"diagnosis_flip_percent": round(100 * float(flips), 2),
                            "mean_abs_dp": round(float(abs(probabilities - reference).mean()), 5)}
        return found

    def describe(self) -> dict:
        return {split: len(x[0]) for split, x in self.inputs.items()}

    @staticmethod
    def line(measured: dict) -> str:
        """`measure`'s figures as the log prints them."""
        return "; ".join(f"{split}: flips {m['diagnosis_flip_percent']:.1f} %, mean |dp| {m['mean_abs_dp']:.4f}"
                         for split, m in measured.items())


def _optimizer(student, s: QatSettings):
    """Adam over the student's trainable parameters; the quantizers' scales at `scale_lr` when it is set."""
    import torch
    from nncf.torch.function_hook.wrapper import get_hook_storage
    trainable = [p for p in student.parameters() if p.requires_grad]
    if s.scale_lr is None:
        return torch.optim.Adam(trainable, lr=s.lr)
    scales = {id(p) for p in get_hook_storage(student).parameters() if p.requires_grad}
    return torch.optim.Adam([{"params": [p for p in trainable if id(p) not in scales], "lr": s.lr},
                             {"params": [p for p in trainable if id(p) in scales], "lr": s.scale_lr}])


def distill(student, teacher, loader, s: QatSettings, log: Callable[[str], None], monitor: Monitor | None = None,
            epochs: list[dict] | None = None, temperatures: dict[str, float] | None = None) -> list[float]:
    """Fine-tune `student` toward `teacher` in place; the mean loss per epoch. With `monitor`, each epoch's record
    (loss, seconds, the monitor's figures) is appended to `epochs`. The first steps' pace gives the time it will
    take, said before the rest runs; with a `minutes` budget no epoch starts that would end past it."""
    import torch
    from tqdm import tqdm

    from edgederm.training.mixup import BatchMixer
    optimizer = _optimizer(student, s)
    # teacher and student see the same mixture: the student matches the teacher's function between the train
    # cases too, where the near ties of new cases lie (module docstring)
    mix = BatchMixer(s.mix_alpha, 0.0, 1.0, torch.Generator().manual_seed(s.seed)) if s.mix_alpha > 0 else None
    student.eval()     # BatchNorm statistics and dropout stay the teacher's (module docstring)
    history, started = [], time.perf_counter()
    budget = None if s.minutes is None else 60 * s.minutes
    for epoch in range(s.epochs):
        elapsed = time.perf_counter() - started
        if budget is not None and history and elapsed + elapsed / len(history) > budget:
            log(f"  QAT: stopped after {len(history)} of {s.epochs} epoch(s): another would end past the "
                f"{s.minutes:g}-minute budget ({elapsed / 60:.1f} min so far)")
            break
        epoch_started, total = time.perf_counter(), 0.0
        bar = tqdm(loader, desc=f"QAT epoch {epoch + 1}/{s.epochs}", unit="batch", leave=False,
                   postfix={} if budget is None else {"budget": f"{s.minutes:g} min"})
        for step, (*inputs, targets) in enumerate(bar):
            if mix is not None:
                inputs, _ = mix(inputs)
            with torch.no_grad():
                teacher_out = teacher(*inputs)
            loss = distillation_loss(student(*inputs), teacher_out, targets, teacher.branch_weights, s,
                                     teacher.branches, temperatures)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            if epoch == 0 and step == 2:     # the pace of three steps: what the whole will take
                per_step = (time.perf_counter() - epoch_started) / 3
                log(f"  QAT: about {per_step * len(loader) * s.epochs / 60:.1f} min for {s.epochs} epoch(s) of "
                    f"{len(loader)} steps" + ("" if budget is None else f" (budget {s.minutes:g} min)"))
        history.append(round(total / len(loader), 5))
        record = {"epoch": epoch + 1, "loss": history[-1], "seconds": round(time.perf_counter() - epoch_started, 1)}
        if monitor is not None:
            record.update(monitor.measure(student))
        if epochs is not None:
            epochs.append(record)
        figures = {split: m for split, m in record.items() if isinstance(m, dict)}
        log(f"  QAT epoch {epoch + 1}/{s.epochs}: loss {history[-1]:.4f} ({record['seconds']:.0f} s)"
            + (f"; {Monitor.line(figures)}" if figures else ""))
    return history


def _named(model, input_names: tuple[str, ...]):
    """The exported models' inputs and outputs under the names every bundle uses."""
    from edgederm import labels as L
    for port, name in zip(model.inputs, input_names):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, L.TASK_KEYS):
        port.get_tensor().set_names({name})
    return model


def to_openvino(student, example: tuple, views: tuple[str, ...] = NO_TTA):
    """The student as an OpenVINO model (NNCF's FakeQuantize ops, weights in float behind them)."""
    import warnings

    import openvino as ov
    import torch

    from edgederm.export.onnx_export import FusedProbabilities
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")     # tracer warnings about quantizer constants
        # Every size but the batch fixed, as in the ONNX graph NNCF's PTQ quantizes. Traced with every size
        # dynamic, timm's TF-style "same" padding (EfficientNet-Lite's strided convolutions) stayed shape
        # arithmetic and a Pad at run time, and OpenVINO ran those convolutions and 30 FakeQuantize in float:
        # on the real `edge` model the student ran at 0.79x OpenVINO FP32 (docs/export.md).
        model = ov.convert_model(FusedProbabilities(student, views).eval(), example_input=example,
                                 input=[ov.PartialShape([-1, *x.shape[1:]]) for x in example])
    return _named(model, student.input_names)


def to_qdq_onnx(student, example: tuple, path: Path, views: tuple[str, ...] = NO_TTA) -> Path:
    """The student as a Q/DQ ONNX graph in TensorRT's form: nncf.strip turns NNCF's quantizers into torch's
    FakeQuantize, which the TorchScript exporter writes as QuantizeLinear / DequantizeLinear pairs."""
    import warnings

    import nncf
    import onnx
    import torch

    from edgederm.export.onnx_export import OPSET, OUTPUT_NAMES, FusedProbabilities
    from edgederm.export.tensorrt_export import tensorrt_form
    stripped = native_strip(student, example)
    names = list(student.input_names)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(FusedProbabilities(stripped, views).eval(), example, str(path), dynamo=False,
                          opset_version=OPSET, input_names=names, output_names=list(OUTPUT_NAMES),
                          dynamic_axes={n: {0: "batch"} for n in (*names, *OUTPUT_NAMES)},
                          do_constant_folding=True)
    model = tensorrt_form(_constants_as_initializers(onnx.load(str(path))))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path



def native_strip(student, example: tuple):
    """`nncf.strip(NATIVE)`, every quantizer torch's FakeQuantize. NNCF 3 gives the inputs of some operations
    one shared quantizer (one scale for an Add's or a Concat's inputs: in `clinical-only`, the global token's
    LayerNorm, the selection's sum and the interaction's residual), and its strip replaces a shared quantizer
    at the first of its hooks only (it walks the hooks with duplicates removed). The others kept NNCF's own
    quantizer, which the exporter writes as `org.openvinotoolkit::FakeQuantize`: an op neither TensorRT nor
    onnxruntime loads. Each of them gets the FakeQuantize the first one got."""
    import nncf
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseQuantizer
    groups: dict[int, list[str]] = {}
    for name, module in get_hook_storage(student).named_hooks(remove_duplicate=False):
        if isinstance(module, BaseQuantizer):
            groups.setdefault(id(module), []).append(name)
    stripped = nncf.strip(student, do_copy=True, strip_format=nncf.StripFormat.NATIVE, example_input=example)
    storage = get_hook_storage(stripped)
    for names in groups.values():
        native = [storage.get_submodule(n) for n in names if not isinstance(storage.get_submodule(n), BaseQuantizer)]
        if not native:
            raise ConfigError(f"QAT: nncf.strip left the quantizer at {names[0]} as NNCF's own: no Q/DQ form for it")
        for name in names:
            storage.set_submodule(name, native[0])
    return stripped


def _constants_as_initializers(model):
    """The TorchScript exporter writes some quantizers' scales and zero points as Constant nodes, or as
    Identity nodes reading a shared initializer; TensorRT's parser (and export/jetson_check.py) wants each
    as an initializer of its own."""
    from onnx import numpy_helper
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            value = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in inits:
            value = numpy_helper.to_array(inits[node.input[0]])
        else:
            kept.append(node)
            continue
        inits[node.output[0]] = numpy_helper.from_array(value, node.output[0])
        graph.initializer.append(inits[node.output[0]])
    del graph.node[:]
    graph.node.extend(kept)
    return model
