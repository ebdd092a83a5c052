"""The training loop: one process, or one per GPU (or CPU process) under torchrun.

    run_dir/
      config.json          resolved model, train and preprocessing config, data path, versions
      metrics.jsonl        one line per epoch: loss, throughput, lr, validation AUC / ACC (null where not scored)
      checkpoints/         the last epoch's resumable state (edgederm.training.checkpoint)
      best.safetensors     weights with the best validation averaged AUC (with ema_decay: the moving average's)
      swa.safetensors      the stochastic-weight average (BatchNorm statistics recomputed)
      model.safetensors    the final model (SWA; without it the best or the last epoch's, of the moving average
                           with ema_decay) with searched branch weights
      branch_weights.json  W_C, W_D, W_FU, the metric searched and its validation score
      calibration.json     temperatures and melanoma thresholds fitted on valid (also in the weights' metadata)
      ranks/rank<r>.json   under torch.distributed: batches and samples each rank saw, weights hash

Randomness is a function of (seed, epoch): each epoch reseeds torch, its
sampler and the mixup / CutMix generator, so a run resumed after epoch k draws
exactly what the uninterrupted run would have drawn (on the CPU, bit for bit).

With `ema_decay` an exponential moving average of the weights (timm's
ModelEmaV3, updated after every optimizer step; its first update copies the
weights) is what valid scores, best.safetensors keeps and the run ends with;
checkpoints carry it, so a resumed run ends with the same average.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.utils import ModelEmaV3
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

import edgederm
from edgederm.data.release import read_release
from edgederm.data.torch_dataset import PairDataset
from edgederm.errors import ConfigError
from edgederm.evaluation.predict import predict_branches
from edgederm.models import create_model
from edgederm.models.config import ModelConfig
from edgederm.models.heads import BranchNet
from edgederm.models.io import load_model, save_weights
from edgederm.models.pretrained import initialize
from edgederm.scoring.calibration import CALIBRATION_KEY, fit_calibration
from edgederm.scoring.metrics import compute_metrics
from edgederm.scoring.weighted_average import weighted_final
from edgederm.training.branch_weights import METRIC, search_branch_weights
from edgederm.training.checkpoint import load_checkpoint, save_checkpoint
from edgederm.training.loss import class_weights_from_counts, mixed_multitask_loss
from edgederm.training.mixup import NO_MIX, BatchMixer, partner
from edgederm.training.recipe import TrainConfig

FINAL = "model.safetensors"


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def average_buffers(self, model: torch.nn.Module) -> None:
        """DDP keeps parameters in step but each rank's BatchNorm statistics follow its own
        batches; average them so every rank holds the same model (what rank 0 checkpoints)."""
        if self.world_size == 1:
            return
        for buffer in model.buffers():
            if buffer.is_floating_point():
                torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM)
                buffer.div_(self.world_size)


def _init_distributed() -> Dist:
    """torchrun sets WORLD_SIZE / RANK / LOCAL_RANK; NCCL on GPUs, gloo on CPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend=backend)
    return Dist(torch.distributed.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def _device(dist: Dist) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


MIX_STREAM = 1 << 40      # keeps the mixing generator's seeds apart from the sampler's


def _mix_seed(seed: int, epoch: int, rank: int) -> int:
    """The mixup / CutMix generator's seed: its own stream per (seed, epoch, rank), so the augmentation and the
    shuffle draw the same with mixing on or off, and each rank draws its own mixtures."""
    return MIX_STREAM + _epoch_seed(seed, epoch) * 1024 + rank


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def update_bn(model: torch.nn.Module, loader, device) -> None:
    """torch.optim.swa_utils.update_bn for a model of several inputs: recompute BatchNorm
    running statistics of the averaged weights with one pass over training data."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None     # cumulative average over the pass
    was_training = model.training
    model.train()
    for *inputs, _ in loader:
        model(*(x.to(device) for x in inputs))
    for m in norms:
        m.momentum = momenta[m]
    model.train(was_training)


def make_optimizer(cfg: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """The recipe's optimiser over parameter groups (fusion blocks + heads, encoders)."""
    if cfg.optimizer == "adamw":      # decoupled weight decay
        return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups, weight_decay=cfg.weight_decay)


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if resume:
        if not (run_dir / "config.json").is_file():
            raise ConfigError(f"{run_dir}: nothing to resume (no config.json); start a run without --resume")
        if (run_dir / FINAL).is_file():
            raise ConfigError(f"{run_dir}: this run has finished ({FINAL} exists); nothing to resume")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir}: already exists and is not empty "
                          "(use --resume to continue it, or choose another --out)")


def _read_history(path: Path, upto_epoch: int) -> list[dict]:
    """Metrics lines of epochs that have a checkpoint (a crash may leave one more)."""
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if line["epoch"] <= upto_epoch]


def train(data: str | Path, run_dir: str | Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
          resume: bool = False, progress: bool = True) -> Path:
    """Train, average, search branch weights; returns the final weights' path."""
    run_dir = Path(run_dir)
    dist = _init_distributed()
    try:
        return _train(Path(data), run_dir, model_cfg, train_cfg, resume, progress, dist)
    finally:
        if dist.world_size > 1:
            torch.distributed.destroy_process_group()


@dataclass
class TrainSession:
    """What the epochs of one run share: built by `setup`, read by `train_one_epoch`, `validate` and `finish`
    (the way timm's train.py splits its main)."""
    data: Path
    run_dir: Path
    model_cfg: ModelConfig
    cfg: TrainConfig
    dist: Dist
    device: torch.device
    initial_weights: dict | None
    train_set: PairDataset
    plain_train_set: PairDataset          # the train cases without augmentation: SWA's BatchNorm pass
    valid_loader: DataLoader | None       # None until the end of `setup` (made after the DDP wrapper, as before)
    per_process: int                      # each process's share of the global batch
    model: BranchNet
    net: torch.nn.Module                  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    swa_model: AveragedModel | None
    ema: ModelEmaV3 | None                # the moving average of the weights (ema_decay), None when off
    class_weights: torch.Tensor | None
    loss_weights: dict[str, float]
    use_amp: bool
    amp_dtype: torch.dtype
    scaler: torch.amp.GradScaler | None   # None until the end of `setup`
    start_epoch: int = 0
    best_score: float = float("-inf")
    ema_updates: int = 0                  # optimizer steps averaged so far (checkpointed: a resumed run goes on)
    batches_seen: int = 0
    samples_seen: int = 0

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def scored(self) -> BranchNet:
        """The weights valid scores and best.safetensors keeps: the moving average when on, else the model."""
        return self.ema.module if self.ema is not None else self.model


@dataclass
class EpochStats:
    total_loss: float
    batches: int
    samples: int
    seconds: float


def _train(data: Path, run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, resume: bool,
           progress: bool, dist: Dist) -> Path:
    s = setup(data, run_dir, model_cfg, cfg, resume, dist)
    for epoch in range(s.start_epoch, s.cfg.epochs):
        stats = train_one_epoch(s, epoch, progress)
        if dist.main:
            _end_epoch(s, epoch, stats, progress)
        dist.barrier()
    if dist.world_size > 1:
        _write_rank_record(s)
    dist.barrier()
    if not dist.main:
        return run_dir / FINAL
    return finish(s)


def _resumed_config(run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, resume: bool):
    """(model config, train config, initial weights): a resumed run's own, saved in its config.json."""
    if not resume:
        return model_cfg, cfg, None
    saved = json.loads((run_dir / "config.json").read_text())
    return ModelConfig.from_saved(saved["model"]), TrainConfig(**saved["train"]), saved.get("initial_weights")


def _datasets(data: Path, model_cfg: ModelConfig, cfg: TrainConfig, dist: Dist):
    """(train cases, augmented train set, plain train set, valid set, per-process batch), the splits checked."""
    release = read_release(data)
    train_cases, valid_cases = release.split("train"), release.split("valid")
    # batch_size is the global batch, whatever the process count: the recipe's learning rate was set for it
    if cfg.batch_size % dist.world_size:
        raise ConfigError(f"batch size {cfg.batch_size} does not split evenly over {dist.world_size} processes; "
                          f"give a multiple of {dist.world_size}")
    per_process = cfg.batch_size // dist.world_size
    if len(train_cases) < cfg.batch_size:
        raise ConfigError(f"{data}: the train split has {len(train_cases)} cases, fewer than one batch "
                          f"({cfg.batch_size})")
    if dist.world_size > 1 and dist.main:   # said even with --quiet: it is how the run trains
        tqdm.write(f"global batch {cfg.batch_size} = {dist.world_size} processes x {per_process}")
    if not valid_cases:
        raise ConfigError(f"{data}: the valid split is empty; it is needed for model selection and branch weights")
    train_set = PairDataset.for_model(train_cases, model_cfg, cfg.augmentation())
    plain_train_set = PairDataset.for_model(train_cases, model_cfg)
    # same cases: each photo decoded once; the cache is keyed by view, so under random crops the plain set
    # (SWA's BatchNorm pass) keeps the test view while the augmented set reads the enlarged photo
    plain_train_set.cache = train_set.cache
    valid_set = PairDataset.for_model(valid_cases, model_cfg)
    return train_cases, train_set, plain_train_set, valid_set, per_process


def _build_model(model_cfg: ModelConfig, cfg: TrainConfig, resume: bool, device: torch.device, dist: Dist,
                 initial_weights: dict | None):
    """(model on `device`, initial weights): seeded, then initialised unless resumed."""
    torch.manual_seed(cfg.seed)
    model = create_model(model_cfg)
    if not resume:   # a resumed run's weights come from its checkpoint
        # said even with progress bars off: which weights a run starts from is not progress, it is provenance
        initial_weights = initialize(model, cfg.pretrained_clinical, cfg.pretrained_derm,
                                     log=tqdm.write if dist.main else None)
    model = model.to(device)
    if cfg.channels_last:
        # On CPUs too: oneDNN's NHWC convolutions and pooling make a tiny-preset epoch ~20 % shorter
        # (2-core AVX2 CPU, 8.3 s against 11.0 s); only the rounding of the sums changes.
        model = model.to(memory_format=torch.channels_last)
    return model, initial_weights


def _optimization(model: BranchNet, cfg: TrainConfig):
    """(optimizer, scheduler, SWA average or None, moving average or None): fusion blocks and heads at lr,
    encoders at lr x scale."""
    encoder_params = [p for encoder in model.encoders() for p in encoder.parameters()]
    in_encoders = {id(p) for p in encoder_params}
    optimizer = make_optimizer(cfg, [
        {"params": [p for p in model.parameters() if id(p) not in in_encoders], "lr": cfg.lr},
        {"params": encoder_params, "lr": cfg.lr * cfg.encoder_lr_scale},
    ])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.lr_factor)
    swa_model = AveragedModel(model) if cfg.swa_epochs else None
    # On the unwrapped model, on its device, in its dtype (float32: AMP autocasts activations, not weights).
    # Without warm-up: timm's decay warm-up is sized for ~1e4+ steps, a run here makes a few hundred.
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None
    return optimizer, scheduler, swa_model, ema


def _start_or_resume(s: TrainSession, resume: bool) -> None:
    """Load the checkpoint of a resumed run, or write a new run's config.json; trim metrics.jsonl to the
    epochs that have a checkpoint."""
    run_dir, dist = s.run_dir, s.dist
    if resume:
        last_epoch, s.best_score, s.ema_updates = load_checkpoint(run_dir, s.model, s.optimizer, s.scheduler,
                                                                  s.swa_model, s.ema)
        s.start_epoch = last_epoch + 1
    elif dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps({
            "model": s.model_cfg.to_dict(), "train": s.cfg.to_dict(), "preprocess": s.model_cfg.preprocess().to_dict(),
            "data": str(s.data), "world_size": dist.world_size, "edgederm": edgederm.__version__,
            "torch": torch.__version__,
            "initial_weights": s.initial_weights,
        }, indent=2) + "\n")
    history = _read_history(run_dir / "metrics.jsonl", s.start_epoch - 1) if dist.main else []
    if dist.main:   # drop a line written for an epoch whose checkpoint never landed
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))


def setup(data: Path, run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, resume: bool,
          dist: Dist) -> TrainSession:
    """The run folder checked, data, model, optimiser and mixed precision ready; a resumed run's state loaded."""
    if dist.main:
        prepare_run_dir(run_dir, resume)
    dist.barrier()
    model_cfg, cfg, initial_weights = _resumed_config(run_dir, model_cfg, cfg, resume)
    device = _device(dist)
    on_cuda = device.type == "cuda"
    train_cases, train_set, plain_train_set, valid_set, per_process = _datasets(data, model_cfg, cfg, dist)
    model, initial_weights = _build_model(model_cfg, cfg, resume, device, dist, initial_weights)
    optimizer, scheduler, swa_model, ema = _optimization(model, cfg)
    class_weights = None
    if cfg.class_weights:
        class_weights = class_weights_from_counts(torch.tensor([c.labels for c in train_cases]))
    use_amp = on_cuda and cfg.amp
    amp_dtype = torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float16
    s = TrainSession(
        data=data, run_dir=run_dir, model_cfg=model_cfg, cfg=cfg, dist=dist, device=device,
        initial_weights=initial_weights, train_set=train_set, plain_train_set=plain_train_set,
        valid_loader=None, per_process=per_process, model=model, net=model, optimizer=optimizer,
        scheduler=scheduler, swa_model=swa_model, ema=ema, class_weights=class_weights,
        # per branch; a network's branches other than the two-photo ones weigh 1
        loss_weights={b: getattr(cfg, f"loss_weight_{b}", 1.0) for b in model.branches},
        use_amp=use_amp, amp_dtype=amp_dtype, scaler=None)
    _start_or_resume(s, resume)
    if dist.world_size > 1:
        s.net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dist.local_rank] if on_cuda else None)
    s.scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    s.valid_loader = DataLoader(valid_set, batch_size=cfg.batch_size * 2, num_workers=cfg.workers)
    return s


def _epoch_loader(s: TrainSession, epoch: int) -> DataLoader:
    """This epoch's shuffled train batches: torch and the sampler reseeded from (seed, epoch)."""
    cfg, dist = s.cfg, s.dist
    torch.manual_seed(_epoch_seed(cfg.seed, epoch))
    if dist.world_size > 1:
        sampler = DistributedSampler(s.train_set, dist.world_size, dist.rank, shuffle=True, seed=cfg.seed,
                                     drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(s.train_set, generator=torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch)))
    return DataLoader(s.train_set, batch_size=s.per_process, sampler=sampler, num_workers=cfg.workers,
                      drop_last=True, pin_memory=s.on_cuda)


def _epoch_mixer(s: TrainSession, epoch: int) -> BatchMixer | None:
    """This epoch's mixup / CutMix, its generator seeded from (seed, epoch, rank); None when off."""
    cfg = s.cfg
    if not cfg.mixes:
        return None
    generator = torch.Generator().manual_seed(_mix_seed(cfg.seed, epoch, s.dist.rank))
    return BatchMixer(cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob, generator)


def train_one_epoch(s: TrainSession, epoch: int, progress: bool) -> EpochStats:
    """One pass over the train split (batches mixed under mixup / CutMix, the moving average updated after
    each step), then BatchNorm statistics averaged over ranks, the schedule stepped and the SWA average
    updated."""
    cfg, device = s.cfg, s.device
    loader = _epoch_loader(s, epoch)
    mixer = _epoch_mixer(s, epoch)
    s.net.train()
    started, total_loss, n_batches, n_samples = time.perf_counter(), 0.0, 0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", dynamic_ncols=True,
               disable=not (progress and s.dist.main))
    for *inputs, targets in bar:
        inputs = [x.to(device, non_blocking=True) for x in inputs]
        targets = targets.to(device, non_blocking=True)
        inputs, draw = mixer(inputs) if mixer is not None else (inputs, NO_MIX)
        if cfg.channels_last:
            inputs = [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs]
        with torch.autocast(device.type, dtype=s.amp_dtype, enabled=s.use_amp):
            loss = mixed_multitask_loss(s.net(*inputs), targets, partner(targets), draw.lam, s.class_weights,
                                        cfg.label_smoothing, s.loss_weights, cfg.loss_weight_location)
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        if s.ema is not None:
            s.ema_updates += 1
            s.ema.update(s.model, step=s.ema_updates)     # step 1 copies the weights, then decay per step
        total_loss += loss.detach().item()
        n_batches += 1
        n_samples += len(targets)
        bar.set_postfix(loss=f"{total_loss / n_batches:.3f}",
                        pairs_per_s=f"{n_samples / (time.perf_counter() - started):.1f}")
    s.batches_seen += n_batches
    s.samples_seen += n_samples
    s.dist.average_buffers(s.model)
    if s.ema is not None:    # each rank averaged its own BatchNorm statistics: every rank holds the same average
        s.dist.average_buffers(s.ema.module)
    s.scheduler.step()
    if s.swa_model is not None and epoch >= cfg.swa_start:
        s.swa_model.update_parameters(s.model)
    return EpochStats(total_loss, n_batches, n_samples, time.perf_counter() - started)


def validate(model: BranchNet, loader: DataLoader, device: torch.device) -> dict:
    """Metrics of the model's weighted final output on the valid split."""
    branch_probs, labels = predict_branches(model, loader, device)
    return compute_metrics(weighted_final(branch_probs, model.branch_weights.tolist()), labels)


def _end_epoch(s: TrainSession, epoch: int, stats: EpochStats, progress: bool) -> None:
    """Rank 0: validate when due (saving a new best), append the metrics line, checkpoint."""
    optimizer = s.optimizer
    record = {"epoch": epoch, "train_loss": stats.total_loss / max(1, stats.batches),
              "lr": optimizer.param_groups[0]["lr"], "encoder_lr": optimizer.param_groups[1]["lr"],
              "seconds": round(stats.seconds, 2),
              "pairs_per_second": round(stats.samples * s.dist.world_size / stats.seconds, 2),
              "valid_avg_auc": None, "valid_avg_acc": None}
    if s.cfg.validates(epoch):
        metrics = validate(s.scored, s.valid_loader, s.device)
        record.update(valid_avg_auc=metrics["avg_auc"], valid_avg_acc=metrics["avg_acc"])
        if metrics["avg_auc"] > s.best_score:
            s.best_score = metrics["avg_auc"]
            extra = {"epoch": epoch, "valid_avg_auc": s.best_score, "initial_weights": s.initial_weights}
            if s.ema is not None:
                extra["weights_of"] = "ema"
            save_weights(s.scored, s.run_dir / "best.safetensors", extra=extra)
    with open(s.run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    save_checkpoint(s.run_dir, epoch, s.model, optimizer, s.scheduler, s.swa_model, s.best_score, s.ema,
                    s.ema_updates)
    if progress:
        scored = (f"  valid AUC {100 * record['valid_avg_auc']:.1f}  ACC {100 * record['valid_avg_acc']:.1f}"
                  if record["valid_avg_auc"] is not None else "")
        tqdm.write(f"epoch {epoch + 1}: loss {record['train_loss']:.3f}{scored}  "
                   f"{record['pairs_per_second']:.1f} pairs/s")


def _write_rank_record(s: TrainSession) -> None:
    """Under torch.distributed: what this rank saw, and its weights' hash (they must agree across ranks)."""
    dist = s.dist
    (s.run_dir / "ranks").mkdir(exist_ok=True)
    (s.run_dir / "ranks" / f"rank{dist.rank}.json").write_text(json.dumps({
        "rank": dist.rank, "world_size": dist.world_size, "batches": s.batches_seen, "samples": s.samples_seen,
        "epochs": s.cfg.epochs - s.start_epoch, "weights_sha256": _weights_digest(s.model)}))


def finish(s: TrainSession) -> Path:
    """SWA BatchNorm update, final model choice, branch-weight search."""
    run_dir, swa_model, valid_loader, cfg, device, initial_weights = (s.run_dir, s.swa_model, s.valid_loader,
                                                                      s.cfg, s.device, s.initial_weights)
    if swa_model is not None:
        update_bn(swa_model.module, DataLoader(s.plain_train_set, batch_size=cfg.batch_size,
                                               num_workers=cfg.workers), device)
        save_weights(swa_model.module, run_dir / "swa.safetensors", extra={"swa_epochs": cfg.swa_epochs,
                                                                          "initial_weights": initial_weights})
        final, source = swa_model.module, "swa"
    elif cfg.final_weights == "last":   # with ema_decay: the moving average after the last epoch
        final, source = s.scored, "ema-last" if s.ema is not None else "last"
    else:   # best.safetensors holds the moving average's best valid epoch when it is on
        final = load_model(run_dir / "best.safetensors").to(device)
        source = "ema-best" if s.ema is not None else "best"
    # W_C, W_D, W_FU are searched on the outputs they will weight: the single view the model and every bundle
    # run; with branch_weights_tta also on 6-view TTA outputs, stored beside them for `evaluate --tta`.
    branch_probs, labels = predict_branches(final, valid_loader, device)
    weights, score = search_branch_weights(branch_probs, labels)
    record = {**dict(zip(final.branches, weights)), "metric": METRIC,
              "valid_score": score, "grid_step": 0.05, "weights_of": source, "outputs": "single view"}
    extra = {"source": source, "branch_weights": list(weights), "initial_weights": initial_weights}
    if cfg.branch_weights_tta:
        tta_probs, _ = predict_branches(final, valid_loader, device, tta=True)
        tta_weights, tta_score = search_branch_weights(tta_probs, labels)
        record["tta"] = {**dict(zip(final.branches, tta_weights)),
                         "valid_score": tta_score, "outputs": "6-view TTA"}
        extra["branch_weights_tta"] = list(tta_weights)
    # Temperatures and melanoma operating points, on the valid P_FI the chosen weights give (what a bundle
    # outputs): they travel with the weights to every bundle.
    calibration = fit_calibration(weighted_final(branch_probs, weights), labels, cfg.melanoma_sensitivity)
    extra[CALIBRATION_KEY] = calibration
    final.set_branch_weights(*weights)
    save_weights(final, run_dir / FINAL, extra=extra)
    (run_dir / "branch_weights.json").write_text(json.dumps(record, indent=2) + "\n")
    (run_dir / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
    return run_dir / FINAL
