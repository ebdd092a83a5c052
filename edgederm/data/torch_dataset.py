"""Torch view of a release split, for training and evaluation.

Images go through `edgederm.preprocess` (the runtimes' code): read, resize,
then for training an augmentation of the resized uint8 image, then normalise.
Under random crops (crop-flip-rot90) the photo is resized once, from the
photo, to the enlarged side the crops are taken from. Resized images are
cached in memory (600 synthetic cases at 224 px: ~180 MB), because decoding
768 x 512 JPEGs each epoch dominates a CPU epoch otherwise; the cache is keyed
by the view (crop rule, side), so datasets that resize differently can share
one (the trainer's augmented and plain train sets do).

An item is (one tensor per model input, in `inputs` order, targets): a photo
is 3 x S x S, the metadata (jif-mmfa) its one-hot vector; targets
are the eight task labels, followed by the body-location index when
`location` is asked for (the clinical-only model's auxiliary task).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from edgederm import labels as L
from edgederm.augment import AugmentConfig, augment_image, check_test_view, enlarged_side
from edgederm.data.inputs import IMAGE_INPUTS, METADATA_INPUT, case_metadata, case_photo
from edgederm.data.release import Case
from edgederm.errors import ConfigError, LabelError
from edgederm.preprocess import PreprocessConfig, normalize, read_input_image, resize_image


class PairDataset(Dataset):
    def __init__(self, cases: list[Case], preprocess: PreprocessConfig,
                 augment: AugmentConfig | None = None, cache: bool = True,
                 inputs: tuple[str, ...] = IMAGE_INPUTS, location: bool = False):
        self.cases = cases
        self.preprocess = preprocess
        self.augment = augment
        self.inputs = inputs
        self.cache: dict[tuple[int, str, str, int], np.ndarray] | None = {} if cache else None
        check_test_view(preprocess.crop, augment)
        # The `zoom` crop is the test view of random crops of the enlarged photo: while training with them,
        # they are taken from the whole photo, not from the zoomed one, resized to the enlarged side.
        random_crops = augment is not None and augment.crop_scale > 1
        self._crop = "none" if random_crops and preprocess.crop == "zoom" else preprocess.crop
        self._side = enlarged_side(preprocess.size, augment.crop_scale) if random_crops else preprocess.size
        self.targets = [list(c.labels) for c in cases]
        # encoded now: a case without known metadata is an error before the first epoch
        self.metadata = [torch.from_numpy(case_metadata(c)) for c in cases] if METADATA_INPUT in inputs else None
        if location:     # checked now: a case without a known location is an error before the first epoch
            for case, row in zip(cases, self.targets):
                try:
                    row.append(L.metadata_index(case.metadata, "location"))
                except LabelError as e:
                    raise ConfigError(f"case {case.case_id}: {e} (the clinical-only model learns body location "
                                      "from meta.csv's `location` column)") from None

    @classmethod
    def for_model(cls, cases: list[Case], cfg, augment: AugmentConfig | None = None, cache: bool = True):
        """The dataset a network with ModelConfig `cfg` trains and is evaluated on."""
        return cls(cases, cfg.preprocess(), augment, cache, cfg.inputs, cfg.learns_location)

    def __len__(self) -> int:
        return len(self.cases)

    def _resized(self, index: int, name: str) -> np.ndarray:
        key = (index, name, self._crop, self._side)
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        img = resize_image(read_input_image(case_photo(self.cases[index], name), self.preprocess),
                           self._side, self.preprocess.resize, self._crop)
        if self.cache is not None:
            self.cache[key] = img
        return img

    def __getitem__(self, index: int):
        out = []
        for name in self.inputs:
            if name == METADATA_INPUT:
                out.append(self.metadata[index])
                continue
            img = self._resized(index, name)
            if self.augment is not None:
                # Drawn from torch's generator so torch.manual_seed / DataLoader worker seeding make it repeatable.
                rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
                img = augment_image(img, rng, self.augment, self.preprocess.size)
            out.append(torch.from_numpy(normalize(img, self.preprocess.mean, self.preprocess.std)))
        return (*out, torch.tensor(self.targets[index], dtype=torch.long))
