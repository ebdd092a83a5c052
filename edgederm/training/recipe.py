"""Training recipes: the paper's, and the small CPU one.

The paper (Tang & Lasser 2024) gives Adam, batch 24, 250 epochs, SWA over the
last 50 epochs, flip/shift/scale/rotate/brightness augmentation and 224 px.
It leaves the learning rate and schedule unstated; we take the closest public
recipe, FusionM4Net (Tang et al. 2022, same first author, same dataset): Adam
lr 3e-5, a per-epoch cosine schedule, no weight decay. Those are the `paper`
defaults and say so in `source`. The paper starts both encoders from
ImageNet weights, so `paper` asks for them (`auto`: whatever is installed
offline; where nothing is, training refuses to start and says how to go on).

The `edge` recipe fine-tunes ImageNet-pretrained EfficientNet-Lite encoders:
the fusion blocks and heads start random and learn at 1e-3, while the
encoders learn at a tenth of that (1e-4), after a two-epoch linear warm-up.
Why: the random heads' first gradients are large and noisy; at the full rate
they would overwrite the pretrained filters before the heads have learned to
use them, and with 413 training cases those filters cannot be re-learned.

Which preset trains with which recipe: edgederm.presets, where a run's
configuration is resolved too (preset <- config file <- command-line flags).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from edgederm.errors import ConfigError


OPTIMIZERS = ("adam", "adamw", "sgd")      # sgd: momentum 0.9, Nesterov
# Without SWA, which epoch's weights a run keeps: the best on valid (valid then also picks the epoch, so its
# valid score flatters it), or the last (a plain fine-tuning baseline's: valid only searches branch weights).
# With the moving average on (ema_decay), they are the average's: its best valid epoch, or its last.
FINAL_WEIGHTS = ("best", "last")
SCHEDULES = ("cosine", "linear", "constant", "onecycle")
# One-cycle (Smith & Topin 2017), as torch's OneCycleLR draws it, stepped per epoch: from lr / 25 up to lr
# (cosine) over the warm-up, then down to lr / 25 / 1e4 (cosine) by the last epoch before SWA. The warm-up is
# `warmup_epochs`, or a tenth of those epochs when that is 0 (a plain fine-tuning baseline's 10 %).
ONECYCLE_DIV, ONECYCLE_FINAL_DIV, ONECYCLE_WARMUP = 25.0, 1e4, 0.1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 250
    batch_size: int = 24
    lr: float = 3e-5
    encoder_lr_scale: float = 1.0  # the encoders learn at lr x this; fusion blocks and heads at lr
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    swa_epochs: int = 50          # SWA over the last N epochs (0: off)
    swa_lr: float = 1.5e-5        # constant learning rate while averaging
    final_weights: str = "best"   # without SWA, the weights kept: key of FINAL_WEIGHTS
    validate_every: int = 1       # score valid every N epochs (and always after the last)
    optimizer: str = "adam"       # key of OPTIMIZERS
    schedule: str = "cosine"      # key of SCHEDULES: the rate after warm-up and before SWA
    augment: bool = True
    augment_policy: str = "fusionm4net"   # key of edgederm.augment.POLICIES
    shift_limit: float | None = None      # each None: the policy's limit
    scale_limit: float | None = None
    rotate_limit: float | None = None
    brightness_limit: float | None = None
    contrast_limit: float | None = None
    crop_scale: float | None = None       # crop-flip-rot90: enlarge the photo this much, then crop at random
    label_smoothing: float = 0.0
    # Exponential moving average of the weights (timm's ModelEmaV3), the alternative to SWA: 0 = off, else the
    # decay per optimizer step (e.g. 0.998). Valid then scores the average, and final_weights picks among its
    # epochs (best or last).
    ema_decay: float = 0.0
    # Mixup / CutMix across the photo pair (edgederm.training.mixup): Beta(alpha, alpha), 0 = off each; with
    # both on a mixed batch takes either with probability 0.5; mix_prob: the chance a batch is mixed at all.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    # per-branch loss weights: the single-shared network's "biased loss" weights dermoscopy above clinical
    loss_weight_clinical: float = 1.0
    loss_weight_derm: float = 1.0
    loss_weight_fusion: float = 1.0
    loss_weight_location: float = 1.0     # the clinical-only network's auxiliary body-location task
    loss_weight_image: float = 1.0        # jif-mmfa's individual branches (its joint branch is "fusion")
    loss_weight_metadata: float = 1.0
    class_weights: bool = False   # inverse-frequency weighted cross-entropy
    branch_weights_tta: bool = False   # also search W_C, W_D, W_FU on 6-view TTA outputs of valid, for evaluate --tta
    melanoma_sensitivity: float = 0.90  # the valid melanoma sensitivity the seven-point and P(MEL) thresholds keep
    seed: int = 0
    pretrained_clinical: str = "auto"   # initial encoder weights: auto, none or a file (edgederm.models.pretrained)
    pretrained_derm: str = "auto"
    workers: int = 0              # DataLoader worker processes
    amp: bool = True              # mixed precision, CUDA only
    channels_last: bool = True    # NHWC model and inputs, on CUDA and CPU alike
    source: str = "paper: Adam, batch 24, 250 epochs, SWA last 50; lr 3e-5 + cosine from FusionM4Net"

    def __post_init__(self):
        problems = []
        if self.epochs < 1:
            problems.append("epochs must be >= 1")
        if self.batch_size < 1:
            problems.append("batch_size must be >= 1")
        if not 0 <= self.swa_epochs <= self.epochs:
            problems.append(f"swa_epochs must be between 0 and epochs ({self.epochs})")
        if self.lr <= 0 or self.swa_lr <= 0 or self.encoder_lr_scale <= 0:
            problems.append("lr, swa_lr and encoder_lr_scale must be > 0")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.final_weights not in FINAL_WEIGHTS:
            problems.append(f"final_weights {self.final_weights!r} is not one of {', '.join(FINAL_WEIGHTS)}")
        elif self.final_weights != "best" and self.swa_epochs:
            problems.append("final_weights applies without SWA only (with SWA the average is kept); set swa_epochs 0")
        if not (self.ema_decay == 0 or 0 < self.ema_decay < 1):
            problems.append("ema_decay must be 0 (off) or between 0 and 1, e.g. 0.998")
        elif self.ema_decay and self.swa_epochs:
            problems.append("ema_decay needs swa_epochs 0 (the moving average and SWA are alternatives: "
                            "set one of them)")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            problems.append("mixup_alpha and cutmix_alpha must be >= 0 (0: off)")
        if not 0 <= self.mix_prob <= 1:
            problems.append("mix_prob must be between 0 and 1")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if not 0 <= self.label_smoothing < 1:
            problems.append("label_smoothing must be >= 0 and < 1")
        if not 0 < self.melanoma_sensitivity <= 1:
            problems.append("melanoma_sensitivity must be > 0 and <= 1")
        if self.validate_every < 1:
            problems.append("validate_every must be >= 1")
        if min(self.loss_weight_clinical, self.loss_weight_derm, self.loss_weight_fusion, self.loss_weight_location,
               self.loss_weight_image, self.loss_weight_metadata) < 0:
            problems.append("loss weights must be >= 0")
        if not 0 <= self.warmup_epochs < self.epochs:
            problems.append("warmup_epochs must be >= 0 and < epochs")
        try:
            self.augmentation()      # an unknown policy is an error now, not at the first batch
        except ConfigError as e:
            problems.append(str(e))
        if problems:
            raise ConfigError("train config: " + "; ".join(problems))

    def augmentation(self):
        """The AugmentConfig of this recipe, or None without augmentation."""
        from edgederm.augment import policy
        if not self.augment:
            return None
        return policy(self.augment_policy, shift_limit=self.shift_limit, scale_limit=self.scale_limit,
                      rotate_limit=self.rotate_limit, brightness_limit=self.brightness_limit,
                      contrast_limit=self.contrast_limit, crop_scale=self.crop_scale)

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (mixup or CutMix on)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def swa_start(self) -> int:
        """First epoch (0-based) whose weights are averaged."""
        return self.epochs - self.swa_epochs

    def lr_factor(self, epoch: int) -> float:
        """Learning rate of `epoch` (0-based) as a multiple of `lr`: linear warm-up,
        cosine to zero over the epochs before SWA (or one cycle), then the constant SWA rate."""
        if self.swa_epochs and epoch >= self.swa_start:
            return self.swa_lr / self.lr
        if self.schedule == "onecycle":
            return self._onecycle_factor(epoch)
        if epoch < self.warmup_epochs:
            return (epoch + 1) / (self.warmup_epochs + 1)
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.swa_start - self.warmup_epochs)
        progress = (epoch - self.warmup_epochs) / span
        if self.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1 + math.cos(math.pi * progress))

    def _onecycle_factor(self, epoch: int) -> float:
        total = self.swa_start
        peak = (self.warmup_epochs or ONECYCLE_WARMUP * total) - 1      # the epoch at lr (OneCycleLR's phases)
        start, end = 1.0 / ONECYCLE_DIV, 1.0 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
        if 0 < peak and epoch <= peak:     # a warm-up under one epoch: the cycle starts at its peak
            low, high, progress = start, 1.0, epoch / peak
        else:
            low, high, progress = 1.0, end, (epoch - peak) / max(total - 1 - peak, 1e-9)
        return high + (low - high) / 2 * (math.cos(math.pi * min(progress, 1.0)) + 1)

    def validates(self, epoch: int) -> bool:
        """Whether `epoch` (0-based) is scored on valid: every `validate_every`-th, and the last."""
        return (epoch + 1) % self.validate_every == 0 or epoch == self.epochs - 1

    def to_dict(self) -> dict:
        return asdict(self)


# The recipes several presets share, named once (edgederm.presets registers each preset with one of these,
# or with a `replace` of one that says what it changes).
PAPER_RECIPE = TrainConfig()
# Random init on a few hundred cases needs a far higher rate than fine-tuning.
# With SWA the final weights never depend on validation, so tiny scores valid every 8th epoch only
# (about 2 s of each 11 s CPU epoch saved; the averaged model is the same bit for bit).
TINY_RECIPE = TrainConfig(epochs=16, batch_size=24, lr=2e-3, weight_decay=1e-4, warmup_epochs=1, swa_epochs=4,
                          swa_lr=2e-4, validate_every=8, amp=False, pretrained_clinical="none", pretrained_derm="none",
                          source="tiny: CPU smoke recipe; Adam 2e-3 (random init), cosine, SWA last 4 of 16")
# Fine-tuning ImageNet encoders as a plain fine-tune does: one AdamW rate for every parameter, one cycle, the best
# valid epoch, random crops with flips and quarter turns. Chosen for `edge` on the real release's valid split over
# three seeds (84.8 averaged AUC against 82.6 for the SWA recipe below: docs/training.md, "The real release in the
# loop"); `edge`'s model takes the matching dropout 0.3 and zoom crop (edgederm.presets).
EDGE_RECIPE = TrainConfig(epochs=25, batch_size=24, optimizer="adamw", lr=3e-4, encoder_lr_scale=1.0, weight_decay=1e-2,
                          schedule="onecycle", warmup_epochs=0, swa_epochs=0, augment_policy="crop-flip-rot90",
                          source="edge: fine-tuning ImageNet encoders; AdamW 3e-4 for every parameter (weight decay "
                                 "1e-2), one-cycle over 25 epochs, best valid epoch, crop-flip-rot90")
# edge's recipe before the valid sweep replaced it: clinical-only, built on edge's encoders, keeps it until its own
# valid evidence says otherwise (it was not re-measured on the real release); jif-mmfa was, and left it.
FINE_TUNE_SWA_RECIPE = TrainConfig(epochs=30, batch_size=24, lr=1e-3, encoder_lr_scale=0.1, weight_decay=1e-4,
                                   warmup_epochs=2, swa_epochs=5, swa_lr=1e-4,
                                   source="fine-tuning ImageNet encoders with SWA; Adam 1e-3 (encoders 1e-4), 2 warm-up "
                                          "epochs, cosine, SWA last 5 of 30")
