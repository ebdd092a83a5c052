"""Torch view of a release split, for training and evaluation.

Images go through `edgederm.preprocess` (the runtimes' code): read, resize,
then for training an augmentation of the resized uint8 image, then normalise.
Resized images are cached in memory (600 synthetic cases at 224 px: ~180 MB),
because decoding 768 x 512 JPEGs each epoch dominates a CPU epoch otherwise.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from edgederm.augment import AugmentConfig, augment_image
from edgederm.data.release import Case
from edgederm.preprocess import PreprocessConfig, normalize, read_input_image, resize_image


class PairDataset(Dataset):
    def __init__(self, cases: list[Case], preprocess: PreprocessConfig,
                 augment: AugmentConfig | None = None, cache: bool = True):
        self.cases = cases
        self.preprocess = preprocess
        self.augment = augment
        self.cache: dict[tuple[int, int], np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.cases)

    def _resized(self, index: int, modality: int) -> np.ndarray:
        key = (index, modality)
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        case = self.cases[index]
        img = resize_image(read_input_image(case.derm if modality else case.clinical, self.preprocess),
                           self.preprocess.size, self.preprocess.resize, self.preprocess.crop)
        if self.cache is not None:
            self.cache[key] = img
        return img

    def __getitem__(self, index: int):
        out = []
        for modality in (0, 1):
            img = self._resized(index, modality)
            if self.augment is not None:
                # Drawn from torch's generator so torch.manual_seed / DataLoader worker seeding make it repeatable.
                rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
                img = augment_image(img, rng, self.augment)
            out.append(torch.from_numpy(normalize(img, self.preprocess.mean, self.preprocess.std)))
        return out[0], out[1], torch.tensor(self.cases[index].labels, dtype=torch.long)
