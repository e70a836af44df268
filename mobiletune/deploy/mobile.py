"""Exports for apps: TFLite, Core ML, and ONNX with a uint8 input. One contract for all three:
the app passes the center crop as it is (uint8 RGB, NHWC for TFLite/ONNX; an image for Core
ML) and gets class probabilities; normalization happens inside the model.

Each export is loaded back in its own runtime and checked on the run's validation images
(top-1 agreement with PyTorch, accuracy); Core ML cannot run off macOS, so its package is
checked structurally (classes, input image, size). TFLite int8 is refused beyond --max-drop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from mobiletune.data.preprocess import Normalized, normalize
from mobiletune.deploy.formats import metadata, state_dict_bytes
from mobiletune.deploy.int8 import int8_partial, int8_path_for, keep_int8
from mobiletune.deploy.parity import (
    CALIB_IMAGES,
    ExportReport,
    Outputs,
    calibration_batches,
    check_samples,
    checked_report,
    decode_crops,
    torch_runner,
)
from mobiletune.errors import ConfigError


class UInt8Classifier(nn.Module):
    """uint8 crops -> class probabilities: the checkpoint's normalization inside the graph
    (`preprocess.Normalized`, the same one the cache's engine runs), softmax at the end."""

    def __init__(self, model: nn.Module, pre: dict, layout: str = "nhwc") -> None:
        super().__init__()
        self.normalized, self.layout = Normalized(model.eval(), pre["mean"], pre["std"]), layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "nchw":  # Core ML's image input: Normalized takes NHWC
            x = x.permute(0, 2, 3, 1)
        return torch.softmax(self.normalized(x), dim=1)


def _batched(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, n: int = 32) -> np.ndarray:
    return np.concatenate([run(x[i:i + n]) for i in range(0, len(x), n)])


def check_options(fmt: str, int8: bool) -> None:
    """Refuse what these exports cannot do, before anything is written."""
    if int8 and fmt != "tflite":
        what = "--uint8-input" if fmt == "onnx" else "Core ML"
        raise ConfigError(f"--int8 is not available with {what}: use --format tflite --int8, "
                          "or --format onnx --int8 (float input).", key="--int8", value=True)
    if fmt == "tflite":
        from mobiletune.predict.litert import need

        need()
    elif fmt == "coreml":
        from mobiletune.deploy.coreml import need

        need()


def _write(model: nn.Module, fmt: str, path: Path, meta: dict, ckpt: dict) -> None:
    from mobiletune.fileio import atomic_write

    pre = ckpt["preprocess"]
    crop, wrapper = pre["crop"], UInt8Classifier(model, pre)
    if fmt == "tflite":
        from mobiletune.deploy.tflite import convert

        data = convert(wrapper, crop, meta)
        atomic_write(path, lambda f: f.write(data))
        atomic_write(path.with_name("labels.txt"),
                     lambda f: f.write("".join(f"{c}\n" for c in ckpt["class_names"]).encode()))
    elif fmt == "onnx":
        import onnx

        from mobiletune.onnxrt import onnx_bytes

        example = torch.zeros(1, crop, crop, 3, dtype=torch.uint8)
        proto = onnx.load_from_string(onnx_bytes(wrapper, crop, "probabilities", example))
        onnx.helper.set_model_props(proto, {**meta, "input": "uint8 NHWC RGB center crop",
                                            "output": "probabilities"})
        atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    else:
        from mobiletune.deploy.coreml import convert

        # Core ML's image input hands the model float pixels 0-255 in NCHW
        convert(UInt8Classifier(model, pre, "nchw"), ckpt, meta, path)


def export_mobile(ckpt: dict, fmt: str, path: Path, *, int8: bool = False,
                  data: str | None = None, max_drop: float = 0.03,
                  progress: Callable[[str], None] = lambda _msg: None,
                  latency_budget_s: float = 1.0) -> ExportReport:
    """Export `ckpt` for apps as `fmt` (tflite | coreml | onnx with a uint8 input) to `path`,
    load it back and check it; with `int8` (tflite) also a full-integer model, refused
    when its val accuracy drops more than `max_drop` below the float export's."""
    from mobiletune.model.checkpoint import model_from_checkpoint
    from mobiletune.predict.backends import open_backend

    check_options(fmt, int8)
    torch.set_flush_denormal(True)
    model, pre = model_from_checkpoint(ckpt), ckpt["preprocess"]
    meta = metadata(ckpt)
    train, val = check_samples(ckpt, data)  # before writing anything: fail early
    crops, labels = decode_crops(val, pre)
    progress(f"converting to {fmt} ({path})")
    _write(model, fmt, path, meta, ckpt)
    sizes = {"pytorch": state_dict_bytes(model), fmt: _size(path)}
    if fmt == "coreml":
        from mobiletune.deploy.coreml import check

        return ExportReport(fmt, path, 0, float("nan"), float("nan"), {}, {}, sizes,
                            notes=check(path, ckpt))
    reference = torch_runner(model)
    runners = {"pytorch": lambda c: reference(normalize(c, pre)), fmt: open_backend(path).run}
    int8_path = int8_path_for(path) if int8 else None
    with int8_partial(int8_path) as tmp:
        if tmp:
            from mobiletune.deploy.tflite import quantize
            from mobiletune.predict.backends import tflite_backend

            progress(f"quantizing to int8 with ranges from up to {CALIB_IMAGES} training images")
            tmp.write_bytes(quantize(path.read_bytes(),
                                     calibration_batches(train, pre, uint8=True)[0]))
            runners["int8"], sizes["int8"] = tflite_backend(tmp).run, os.path.getsize(tmp)
        progress(f"checking {fmt} in its runtime on {len(labels)} validation images")
        res = Outputs({k: _batched(r, crops) for k, r in runners.items()}, labels, crops[:1])
        if tmp:
            keep_int8(res, fmt, max_drop, path, tmp, int8_path)
    return checked_report(fmt, path, res, runners, sizes, int8_path, 0 if int8_path else None,
                          latency_budget_s, progress)


def _size(path: Path) -> int:
    if path.is_dir():  # an .mlpackage is a folder
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return os.path.getsize(path)
