"""Batch sources for a stage: live images through a DataLoader (cached ones: cache.py)."""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from mobiletune.data import ImageDataset, Sample, eval_transform, train_transform


def balanced_sampler(labels: list[int], seed: int) -> WeightedRandomSampler:
    """Draw each class equally often (data.balance: sampler)."""
    counts = Counter(labels)
    weights = torch.tensor([1.0 / counts[y] for y in labels], dtype=torch.double)
    g = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=g)


def class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """n / (C * count) per class (data.balance: weights); absent classes get weight 0."""
    counts = torch.bincount(torch.tensor(labels), minlength=num_classes).double()
    w = len(labels) / (num_classes * counts.clamp(min=1))
    return (w * (counts > 0)).float()


def decode_side(pre: dict) -> int:
    """Smallest side JPEGs must keep when decoded at reduced scale: random crops may
    take a quarter of the area, so keep twice the crop (and at least the resize)."""
    return max(pre["resize"], 2 * pre["crop"])


class LiveData:
    """Decode and transform images every epoch; the frozen prefix runs on each batch."""

    live = True

    def __init__(self, train: list[Sample], val: list[Sample], pre: dict, *, augment: str,
                 batch_size: int, workers: int, balance: str, pin: bool = False) -> None:
        side = decode_side(pre)
        self.train_set = ImageDataset(train, train_transform(pre, augment), side)
        self.val_set = ImageDataset(val, eval_transform(pre), pre["resize"])
        self.batch_size, self.workers, self.balance, self.pin = batch_size, workers, balance, pin
        self.n_train = len(train)
        self.steps_per_epoch = -(-len(train) // batch_size)

    def _loader(self, dataset, *, shuffle: bool, seed: int, sampler=None) -> DataLoader:
        g = torch.Generator().manual_seed(seed)  # order and worker seeds follow the epoch
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle and sampler is None,
                          sampler=sampler, num_workers=self.workers, generator=g,
                          pin_memory=self.pin, persistent_workers=False)

    def train_batches(self, epoch_seed: int):
        labels = [s.label for s in self.train_set.samples]
        sampler = balanced_sampler(labels, epoch_seed) if self.balance == "sampler" else None
        return self._loader(self.train_set, shuffle=True, seed=epoch_seed, sampler=sampler)

    def val_batches(self):
        return self._loader(self.val_set, shuffle=False, seed=0)


def make_feed(cfg, data, pre: dict, model, unfreeze: int, device, callbacks):
    """The batch source for a stage: live decoding now; cached prefix outputs with cache.py."""
    return LiveData(data.of("train"), data.of("val"), pre, augment=cfg.data.augment,
                    batch_size=cfg.data.batch_size, workers=cfg.workers,
                    balance=cfg.data.balance, pin=device.type == "cuda")
