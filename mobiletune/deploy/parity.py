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

from mobiletune.data.images import load_image
from mobiletune.data.preprocess import crop_uint8, normalize
from mobiletune.data.samples import Sample
from mobiletune.data.scan import read_splits, scan
from mobiletune.errors import DataError
from mobiletune.onnxrt import softmax

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
    """(uint8 NHWC center crops, labels) for the images that decode, the crops every
    backend starts from (`preprocess.crop_uint8`); images that do not decode are left out."""
    for start in range(0, len(samples), batch_size):
        xs, ys = [], []
        for s in samples[start:start + batch_size]:
            try:
                xs.append(crop_uint8(load_image(s.path, pre["resize"]), pre))
                ys.append(s.label)
            except Exception:  # moved or unreadable since training: not part of the check
                continue
        if xs:
            yield np.stack(xs), np.asarray(ys)


def _none_decoded(samples: list[Sample], what: str) -> DataError:
    return DataError(f"None of the {len(samples)} {what} images could be decoded "
                     f"(first: {samples[0].path if samples else '-'}).")


def decode_crops(samples: list[Sample], pre: dict, what: str = "check"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """All of `decode_batches` at once; DataError when not one image decodes."""
    parts = list(decode_batches(samples, pre))
    if not parts:
        raise _none_decoded(samples, what)
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


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
    """Decode `samples` once and run every runner on each (normalized) batch."""
    out, parts, labels = Outputs(), {k: [] for k in runners}, []
    for crops, y in decode_batches(samples, pre, batch_size):
        x = normalize(crops, pre)
        out.first = x[:1] if out.first is None else out.first
        labels.append(y)
        for name, run in runners.items():
            parts[name].append(run(x))
    if not labels:
        raise _none_decoded(samples, "check")
    out.labels = np.concatenate(labels)
    out.probs = {k: np.concatenate(v) for k, v in parts.items()}
    return out


def calibration_batches(train: list[Sample], pre: dict, n: int = CALIB_IMAGES, seed: int = 0,
                        uint8: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """Batches of 16 of up to `n` training images (a seeded sample), normalized NCHW float32
    or, with `uint8`, the crops themselves; and their labels."""
    if not train:
        raise DataError("No training images to calibrate int8 ranges on; pass a data folder "
                        "with train/ images with --data DIR.")
    picked = random.Random(seed).sample(train, min(n, len(train)))
    crops, labels = decode_crops(picked, pre, "calibration")
    batches = [crops[i:i + 16] for i in range(0, len(crops), 16)]
    return (batches if uint8 else [normalize(b, pre) for b in batches]), labels


@dataclass
class ExportReport:
    """What `export` wrote and how the export compares with the PyTorch model."""

    format: str
    path: Path
    images: int  # validation images the parity check ran on
    agreement: float  # top-1 agreement of the export with PyTorch
    max_prob_diff: float
    accuracy: dict[str, float]  # per model: pytorch, onnx|torchscript[, int8]
    latency_ms: dict[str, float]  # batch 1, per model
    size_bytes: dict[str, int]  # on disk, per model (pytorch: its state_dict)
    int8_path: Path | None = None
    int8_float_blocks: int | None = None  # trailing blocks the int8 model keeps float
    notes: list[str] = field(default_factory=list)  # checks made without running (Core ML)

    @property
    def int8_drop(self) -> float | None:
        return self.accuracy[self.format] - self.accuracy["int8"] if self.int8_path else None


def checked_report(fmt: str, path: Path, res: Outputs, runners: dict[str, Runner],
                   sizes: dict[str, int], int8_path: Path | None, float_blocks: int | None,
                   latency_budget_s: float, progress: Callable[[str], None]) -> ExportReport:
    """Time every runner at batch 1 and report the parity check in `res` against PyTorch."""
    from mobiletune.onnxrt import time_ms

    progress("timing batch-1 latency")
    # warm-up calls: TorchScript's profiling executor optimizes the graph during its first ones
    latency = {k: time_ms(lambda r=r: r(res.first), budget_s=latency_budget_s, warmup=3)
               for k, r in runners.items()}
    return ExportReport(fmt, path, len(res.labels), res.agreement("pytorch", fmt),
                        res.max_diff("pytorch", fmt), {k: res.accuracy(k) for k in runners},
                        latency, sizes, int8_path, float_blocks)
