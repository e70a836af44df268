"""Batch sources for a stage: live images through a DataLoader, or cached prefix outputs
(the entries of frozen/cache.py) stacked into batches."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from mobiletune.data import ImageDataset, Sample
from mobiletune.transforms import decode_side, eval_transform, train_transform


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



class EntryStack:
    """Per-image cache entries read memory-mapped on demand: `stack[i]` is image i's
    [views, ...] array, so a data set larger than RAM still trains."""

    def __init__(self, paths: list) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.load(self.paths[i], mmap_mode="r")


class CachedData:
    """Batches of cached frozen-prefix outputs; each epoch draws one of K views per image."""

    live = False

    def __init__(self, train, train_labels: list[int], val, val_labels: list[int], *,
                 batch_size: int, balance: str) -> None:
        self.train, self.val = train, val
        self.train_labels, self.val_labels = torch.tensor(train_labels), torch.tensor(val_labels)
        self.batch_size, self.balance = batch_size, balance
        self.n_train = len(train_labels)
        self.steps_per_epoch = -(-self.n_train // batch_size)

    def _batches(self, arrays, labels, order, views):
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size].tolist()
            x = np.stack([arrays[i][v] for i, v in zip(idx, views[start:start + len(idx)])])
            yield torch.from_numpy(x), labels[idx]

    def train_batches(self, epoch_seed: int):
        g = torch.Generator().manual_seed(epoch_seed)
        if self.balance == "sampler":
            order = torch.tensor(list(balanced_sampler(self.train_labels.tolist(), epoch_seed)))
        else:
            order = torch.randperm(self.n_train, generator=g)
        k = self.train[0].shape[0] if self.n_train else 1
        views = torch.randint(k, (len(order),), generator=g).tolist()
        return self._batches(self.train, self.train_labels, order, views)

    def val_batches(self):
        n = len(self.val_labels)
        return self._batches(self.val, self.val_labels, torch.arange(n), [0] * n)


def _derive(mid: torch.nn.Module, arrays, batch: int = 64) -> np.ndarray:
    """Run the frozen middle (blocks after the cache depth, pooling, classifier[:-2]) over
    cached entries, giving head-stage features without a second pass over the images."""
    mid.eval()
    out = []
    with torch.inference_mode():
        for i in range(len(arrays)):
            a = torch.from_numpy(np.asarray(arrays[i], dtype=np.float32))
            out.append(torch.cat([mid(a[j:j + batch]) for j in range(0, len(a), batch)]).numpy())
    return np.stack(out) if out else np.zeros((0, 1, 1), np.float32)


def _cached_feed(cfg, data, pre: dict, model, unfreeze: int, device, callbacks) -> CachedData:
    from mobiletune.frozen.cache import FeatureCache, cache_root, jobs_for
    from mobiletune.frozen.engine import frozen_engine, module_digest
    from mobiletune.model import HeadPrefix, Tail, boundary

    # The head stage of a run that will finetune caches at the finetune boundary, so the
    # images pass through the backbone once for both stages.
    depth = unfreeze or cfg.finetune.unfreeze
    k = boundary(model, depth)
    prefix = model.features[:k] if depth else HeadPrefix(model)
    views = 1 if cfg.data.augment == "none" else cfg.data.views
    root = cache_root()
    store = FeatureCache(root, module_digest(prefix, f"{cfg.model.arch}|{k}"), pre,
                         cfg.data.augment, views)
    train, val = data.of("train"), data.of("val")
    jobs = jobs_for(train, val)
    todo = store.missing(jobs)
    if todo:
        engine = frozen_engine(prefix, device, root, pre["crop"])
        callbacks.on_message(f"caching frozen features: {len(todo)} images x {views} views "
                             f"({engine.name})")
        store.fill(todo, engine, on_progress=lambda d, t: callbacks.on_progress("cache", d, t))
    tr = EntryStack([store.path(p, kind) for p, kind in jobs[:len(train)]])
    va = EntryStack([store.path(p, kind) for p, kind in jobs[len(train):]])
    if depth and not unfreeze:
        mid = torch.nn.Sequential(Tail(model, k).blocks, torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(1), model.classifier[:-2])
        tr, va = _derive(mid, tr), _derive(mid, va)
    return CachedData(tr, [s.label for s in train], va, [s.label for s in val],
                      batch_size=cfg.data.batch_size, balance=cfg.data.balance)


def make_feed(cfg, data, pre: dict, model, unfreeze: int, device, callbacks):
    """The batch source for a stage: cached prefix outputs (data.cache), else live images."""
    if cfg.data.cache:
        return _cached_feed(cfg, data, pre, model, unfreeze, device, callbacks)
    return LiveData(data.of("train"), data.of("val"), pre, augment=cfg.data.augment,
                    batch_size=cfg.data.batch_size, workers=cfg.workers,
                    balance=cfg.data.balance, pin=device.type == "cuda")
