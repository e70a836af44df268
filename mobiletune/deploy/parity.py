"""The images an export is checked on, decoded once and fed to every model side by side.

Check images come from the run (its splits.csv) or a `--data` folder, labelled in the
checkpoint's class order; `collect` runs every runner (PyTorch, ONNX Runtime, TFLite, int8)
on the same decoded batches, so their probabilities compare image for image.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from mobiletune.data import Sample, read_splits, scan
from mobiletune.deploy.runtime import softmax
from mobiletune.errors import DataError
from mobiletune.images import load_image
from mobiletune.transforms import eval_transform

CALIB_IMAGES = 128  # enough for stable min/max ranges; calibration time grows linearly


def _run_samples(run_dir: Path, class_names: list[str]) -> list[Sample]:
    csv_path = run_dir / "splits.csv"
    if not csv_path.is_file():
        raise DataError(f"{run_dir} has no splits.csv to take check images from; pass the "
                        "data folder with --data DIR.")
    return read_splits(csv_path, class_names, need=("val",)).samples


def _folder_samples(data: str, ckpt: dict) -> list[Sample]:
    cfg = ckpt["config"].get("data", {})
    found = scan(data, cfg.get("val_split", 0.2), ckpt["config"].get("seed", 0))
    names = list(ckpt["class_names"])
    unknown = [c for c in found.classes if c not in names]
    if unknown:
        raise DataError(f"{data} has class folder(s) {', '.join(unknown)} that the model does "
                        f"not know (it was trained on {', '.join(names)}).")
    return [Sample(s.path, names.index(found.classes[s.label]), s.split) for s in found.samples]


def check_samples(ckpt: dict, data: str | None) -> tuple[list[Sample], list[Sample]]:
    """(train, val) images with labels in the checkpoint's class order: from `data` when
    given (scanned and split as the run was), else from the run's splits.csv."""
    samples = _folder_samples(data, ckpt) if data else \
        _run_samples(Path(ckpt["path"]).parent, list(ckpt["class_names"]))
    train = [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val"]
    if not val:
        where = data or str(Path(ckpt["path"]).parent / "splits.csv")
        raise DataError(f"{where} lists no validation images to check the export on; pass a "
                        "data folder with val/ images with --data DIR.")
    return train, val


def decode_batches(samples: list[Sample], pre: dict, batch_size: int = 32
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(NCHW float32 batch, labels) for the images that decode; others are left out."""
    transform = eval_transform(pre)
    for start in range(0, len(samples), batch_size):
        xs, ys = [], []
        for s in samples[start:start + batch_size]:
            try:
                xs.append(transform(load_image(s.path, pre["resize"])).numpy())
                ys.append(s.label)
            except Exception:  # moved or unreadable since training: not part of the check
                continue
        if xs:
            yield np.stack(xs), np.asarray(ys)


Runner = Callable[[np.ndarray], np.ndarray]  # NCHW float32 -> probabilities


def torch_runner(model: nn.Module) -> Runner:
    """Probabilities from a PyTorch (or TorchScript) module."""
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(model(torch.from_numpy(x)).float(), 1).numpy()
    return run


def onnx_runner(session) -> Runner:
    """Probabilities from an ONNX Runtime session whose graph outputs logits."""
    name = session.get_inputs()[0].name
    return lambda x: softmax(session.run(None, {name: x})[0])


@dataclass
class Outputs:
    """Every runner's probabilities on the same decoded images, and their labels."""

    probs: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    first: np.ndarray | None = None  # one decoded image, for latency

    def accuracy(self, name: str) -> float:
        known = self.labels >= 0
        return float((self.probs[name][known].argmax(1) == self.labels[known]).mean())

    def agreement(self, a: str, b: str) -> float:
        return float((self.probs[a].argmax(1) == self.probs[b].argmax(1)).mean())

    def max_diff(self, a: str, b: str) -> float:
        return float(np.abs(self.probs[a] - self.probs[b]).max())


def collect(samples: list[Sample], pre: dict, runners: dict[str, Runner],
            batch_size: int = 32) -> Outputs:
    """Decode `samples` once and run every runner on each batch."""
    out, parts, labels = Outputs(), {k: [] for k in runners}, []
    for x, y in decode_batches(samples, pre, batch_size):
        out.first = x[:1] if out.first is None else out.first
        labels.append(y)
        for name, run in runners.items():
            parts[name].append(run(x))
    if not labels:
        raise DataError(f"None of the {len(samples)} check images could be decoded "
                        f"(first: {samples[0].path if samples else '-'}).")
    out.labels = np.concatenate(labels)
    out.probs = {k: np.concatenate(v) for k, v in parts.items()}
    return out


def calibration_batches(train: list[Sample], pre: dict, n: int = CALIB_IMAGES,
                        seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Preprocessed batches of up to `n` training images (a seeded sample) and their labels."""
    if not train:
        raise DataError("No training images to calibrate int8 ranges on; pass a data folder "
                        "with train/ images with --data DIR.")
    picked = random.Random(seed).sample(train, min(n, len(train)))
    decoded = list(decode_batches(picked, pre, batch_size=16))
    if not decoded:
        raise DataError(f"None of the {len(picked)} calibration images could be decoded "
                        f"(first: {picked[0].path}).")
    return [x for x, _ in decoded], np.concatenate([y for _, y in decoded])
