"""Batch sources for a stage: live images through a DataLoader, or cached prefix outputs
(the entries of frozen/cache.py) stacked into batches."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from mobiletune import dist
from mobiletune.config.schema import Config, finetune_depth
from mobiletune.data.samples import Sample
from mobiletune.data.scan import ImageDataset
from mobiletune.data.transforms import decode_side, eval_transform, train_transform


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
        self.batch_size, self.workers, self.balance, self.pin = \
            per_rank_batch(batch_size), workers, balance, pin
        self.n_train = len(train)
        self.steps_per_epoch = -(-len(rank_share(torch.arange(len(train)))) // self.batch_size)

    def _loader(self, dataset, *, shuffle: bool, seed: int, sampler=None) -> DataLoader:
        g = torch.Generator().manual_seed(seed)  # order and worker seeds follow the epoch
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle and sampler is None,
                          sampler=sampler, num_workers=self.workers, generator=g,
                          pin_memory=self.pin, persistent_workers=False)

    def train_batches(self, epoch_seed: int):
        labels = [s.label for s in self.train_set.samples]
        if not dist.active():  # one process: exactly the order it always had
            sampler = balanced_sampler(labels, epoch_seed) if self.balance == "sampler" else None
            return self._loader(self.train_set, shuffle=True, seed=epoch_seed, sampler=sampler)
        g = torch.Generator().manual_seed(epoch_seed)
        order = epoch_order(self.n_train, labels, self.balance, epoch_seed, g)
        return self._loader(self.train_set, shuffle=False, seed=epoch_seed,
                            sampler=rank_share(order).tolist())

    def val_batches(self, shard: bool = True):
        """This rank's share of the val images (all of them with shard=False)."""
        if not dist.active() or not shard:
            return self._loader(self.val_set, shuffle=False, seed=0)
        share = list(dist.shard(range(len(self.val_set))))
        return self._loader(self.val_set, shuffle=False, seed=0, sampler=share)



def epoch_order(n: int, labels: list[int], balance: str, epoch_seed: int,
                generator: torch.Generator) -> torch.Tensor:
    """The epoch's visiting order over all n training items (the same on every rank)."""
    if balance == "sampler":
        return torch.tensor(list(balanced_sampler(labels, epoch_seed)), dtype=torch.long)
    return torch.randperm(n, generator=generator)


def rank_share(order: torch.Tensor) -> torch.Tensor:
    """This rank's items of an epoch order: padded by wrapping to a multiple of the world
    size, then every world-th item, so each rank takes the same number of steps."""
    world, r = dist.world_size(), dist.rank()
    if world == 1 or len(order) == 0:
        return order
    pad = -len(order) % world
    order = torch.cat([order, order[:pad]]) if pad else order
    return order[r::world]


def per_rank_batch(batch_size: int) -> int:
    """`data.batch_size` is the effective (global) batch: each rank takes its share."""
    return -(-batch_size // dist.world_size())


# Cached splits up to this many bytes are copied into RAM once (then an epoch is an
# in-memory gather); larger ones are read from the memory-mapped packs batch by batch.
RAM_BYTES = int(os.environ.get("MOBILETUNE_CACHE_RAM_MB", "2048")) << 20


class CachedData:
    """Batches of cached frozen-prefix outputs; each epoch draws one of K views per image.

    `train` / `val` are cache Entries (frozen/store.py) or in-RAM arrays [n, views, ...].
    """

    live = False

    def __init__(self, train, train_labels: list[int], val, val_labels: list[int], *,
                 batch_size: int, balance: str, pin: bool = False) -> None:
        self.train, self.val = train, val
        self.train_labels, self.val_labels = torch.tensor(train_labels), torch.tensor(val_labels)
        self.batch_size, self.balance, self.pin = per_rank_batch(batch_size), balance, pin
        self.n_train = len(train_labels)
        self.steps_per_epoch = -(-len(rank_share(torch.arange(self.n_train))) // self.batch_size)

    def _batches(self, arrays, labels, order: torch.Tensor, views: torch.Tensor):
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size].numpy()
            v = views[start:start + len(idx)].numpy()
            x = arrays[idx, v] if isinstance(arrays, np.ndarray) else arrays.take(idx, v)
            x = torch.from_numpy(np.ascontiguousarray(x))
            yield (x.pin_memory() if self.pin else x), labels[idx]

    def train_batches(self, epoch_seed: int):
        g = torch.Generator().manual_seed(epoch_seed)
        order = epoch_order(self.n_train, self.train_labels.tolist(), self.balance, epoch_seed, g)
        k = _views(self.train)
        views = torch.randint(k, (len(order),), generator=g)  # drawn before sharding: per item
        views = rank_share(views)  # the same draw as one process makes, split like the order
        return self._batches(self.train, self.train_labels, rank_share(order), views)

    def val_batches(self, shard: bool = True):
        """This rank's share of the val entries (all of them with shard=False)."""
        order = torch.arange(len(self.val_labels))
        order = dist.shard(order) if shard else order  # no padding: counts stay exact
        return self._batches(self.val, self.val_labels, order, torch.zeros(len(order), dtype=torch.long))


def _views(arrays) -> int:
    shape = arrays.shape[1:] if isinstance(arrays, np.ndarray) else arrays.entry_shape
    return shape[0] if len(arrays) else 1


def _derive(mid: torch.nn.Module, entries, device: torch.device, batch: int = 256) -> np.ndarray:
    """Run the frozen middle (blocks after the cache depth, pooling, classifier[:-2]) over
    cached entries in large slices, giving head-stage features [n, views, d] without a
    second pass over the images."""
    from mobiletune.frozen.cache import cache_root
    from mobiletune.frozen.engine import frozen_engine

    n, rows = len(entries), _views(entries)
    if not n:
        return np.zeros((0, 1, 1), np.float32)
    shape = entries.block(0, 1).shape[2:]  # e.g. 160 x 7 x 7 at MobileNetV2's last 3 blocks
    # ONNX Runtime on CPU, like every frozen pass: 643 hymenoptera views in 0.6-0.7 s
    # against 1.0 s in PyTorch; exported once into the cache like the prefix
    engine = frozen_engine(mid, device, cache_root(), shape[-1], example=torch.zeros((1,) + shape))
    per = max(1, batch // rows)
    out: np.ndarray | None = None
    with torch.inference_mode():
        for s in range(0, n, per):
            block = entries.block(s, min(s + per, n))
            a = torch.from_numpy(np.asarray(block, dtype=np.float32))
            z = engine(a.reshape((-1,) + a.shape[2:])).cpu().numpy()
            if out is None:
                out = np.empty((n, rows, z.shape[-1]), np.float32)
            out[s:s + len(block)] = z.reshape(len(block), rows, -1)
    return out if out is not None else np.zeros((0, 1, 1), np.float32)


def _say_set_aside(callbacks) -> None:
    """One line per damaged cache file found and set aside (frozen/store.py)."""
    from mobiletune.frozen.integrity import take_notices

    for line in take_notices():
        callbacks.on_message(line)


def _fill_shared(store, jobs, prefix, device, root, pre, views, callbacks) -> None:
    """Every missing entry computed once: each rank fills its share, then all wait for the
    whole cache (the cache folder must be shared by every node)."""
    from mobiletune.frozen.decoders import decoder_processes, fill_in_processes
    from mobiletune.frozen.engine import frozen_engine
    from mobiletune.frozen.fill import fill as fill_missing

    todo = store.missing(jobs)  # verifies every pack it reads an entry from
    _say_set_aside(callbacks)
    dist.barrier()  # nobody writes before every rank has listed what is missing
    mine = list(dist.shard(todo))
    if todo:
        callbacks.on_message(f"caching frozen features: {len(todo)} images x {views} views"
                             + (f" ({dist.world_size()} ranks)" if dist.active() else ""))

    def fill() -> None:
        def engine():
            return frozen_engine(prefix, device, root, pre["crop"], pixels=pre, concurrent=True)

        def progress(done: int, total: int) -> None:
            callbacks.on_progress("cache", done, total)

        processes = decoder_processes(device, len(mine))
        if processes:  # beside a GPU: decode in processes, big engine batches
            fill_in_processes(store, mine, engine, processes=processes, on_progress=progress)
        else:  # the engine is exported while the first images decode
            fill_missing(store, mine, engine, on_progress=progress)

    dist.agree(fill)  # doubles as the barrier: every share is written

    def check() -> None:
        left = len(store.missing(jobs))
        if left:
            from mobiletune.errors import DataError

            raise DataError(f"{left} cache entries written by other ranks are not visible in "
                            f"{store.dir}; every node must share the cache folder (set "
                            "MOBILETUNE_CACHE to a shared path).")

    dist.agree(check)


@dataclass(frozen=True)
class FeedSpec:
    """What a stage's batch source depends on, out of the whole config."""

    arch: str
    cache: bool  # data.cache: frozen outputs from the cache, else live images
    augment: str
    views: int  # augmented views cached per training image (1 without augmentation)
    batch_size: int
    balance: str
    workers: int
    finetune_depth: int  # blocks a later finetune unfreezes: where a head stage caches

    @classmethod
    def of(cls, cfg: Config) -> FeedSpec:
        """A head stage caches at the finetune stage's boundary, or, for a head-only run, at
        the boundary `finetune` unfreezes by default: that command then finds its inputs in
        the cache instead of passing every image through the backbone again."""
        d = cfg.data
        return cls(cfg.model.arch, d.cache, d.augment, 1 if d.augment == "none" else d.views,
                   d.batch_size, d.balance, cfg.workers,
                   finetune_depth(cfg.model.arch, cfg.finetune.unfreeze))


def _cached_feed(spec: FeedSpec, data, pre: dict, model, unfreeze: int, device,
                 callbacks) -> CachedData:
    from mobiletune.frozen.cache import FeatureCache, cache_root, jobs_for
    from mobiletune.frozen.engine import module_digest
    from mobiletune.model.backbone import HeadPrefix, Tail, boundary

    # The head stage of a run that will finetune caches at the finetune boundary, so the
    # images pass through the backbone once for both stages.
    depth = unfreeze or spec.finetune_depth
    k = boundary(model, depth)
    prefix = model.features[:k] if depth else HeadPrefix(model)
    views, root = spec.views, cache_root()
    store = FeatureCache(root, module_digest(prefix, f"{spec.arch}|{k}"), pre, spec.augment, views)
    train, val = data.of("train"), data.of("val")
    jobs = jobs_for(train, val)
    _fill_shared(store, jobs, prefix, device, root, pre, views, callbacks)
    tr, va = store.entries(jobs[:len(train)]), store.entries(jobs[len(train):])
    _say_set_aside(callbacks)  # an engine set aside while filling
    if depth and not unfreeze:
        mid = torch.nn.Sequential(Tail(model, k).blocks, torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(1), model.classifier[:-2])
        tr, va = _derive(mid, tr, device), _derive(mid, va, device)
        _say_set_aside(callbacks)
    else:
        tr, va = (e.load() if e.nbytes <= RAM_BYTES else e for e in (tr, va))
    return CachedData(tr, [s.label for s in train], va, [s.label for s in val],
                      batch_size=spec.batch_size, balance=spec.balance, pin=device.type == "cuda")


def make_feed(spec: FeedSpec, data, pre: dict, model, unfreeze: int, device, callbacks):
    """The batch source for a stage: cached prefix outputs (data.cache), else live images."""
    if spec.cache:
        return _cached_feed(spec, data, pre, model, unfreeze, device, callbacks)
    return LiveData(data.of("train"), data.of("val"), pre, augment=spec.augment,
                    batch_size=spec.batch_size, workers=spec.workers, balance=spec.balance,
                    pin=device.type == "cuda")
