"""Export a checkpoint to ONNX or TorchScript, check parity, and optionally quantize to int8.

The exported graph maps a normalized float32 NCHW batch (any batch size) to logits. Class
names and preprocessing travel inside the file: ONNX `metadata_props`, TorchScript extra
files, both under the keys of `onnxrt.META_KEYS`. Parity is measured on real images of
the run (its splits.csv, or `--data`), decoded once and fed to every model side by side.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from mobiletune.deploy.formats import (
    FILE_NAMES,
    default_path,
    metadata,
    state_dict_bytes,
)
from mobiletune.deploy.int8 import int8_partial, int8_path_for, keep_int8, quantize_int8
from mobiletune.deploy.parity import (
    CALIB_IMAGES,
    ExportReport,
    Runner,
    calibration_batches,
    check_samples,
    checked_report,
    collect,
    onnx_runner,
    torch_runner,
)
from mobiletune.errors import ConfigError
from mobiletune.fileio import atomic_write
from mobiletune.onnxrt import make_session, onnx_bytes
from mobiletune.predict.backends import load_torchscript


def write_onnx(model: nn.Module, path: str | Path, meta: dict[str, str], image_size: int) -> Path:
    """Write `model` as ONNX with `meta` in its metadata_props (whole or not at all)."""
    import onnx

    proto = onnx.load_from_string(onnx_bytes(model, image_size))
    onnx.helper.set_model_props(proto, meta)
    return atomic_write(path, lambda f: f.write(proto.SerializeToString()))


def write_torchscript(model: nn.Module, path: str | Path, meta: dict[str, str],
                      image_size: int) -> Path:
    """Write `model` traced to TorchScript, with `meta` as `_extra_files`."""
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # torch.jit is deprecated, still the format users load
        traced = torch.jit.trace(model.eval(), torch.zeros(1, 3, image_size, image_size))
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files=dict(meta))
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def _check_format(fmt: str, int8: bool, uint8_input: bool) -> None:
    if fmt not in FILE_NAMES:
        raise ConfigError(f"Unknown export format {fmt!r}; choose {', '.join(FILE_NAMES)}.",
                          key="--format", value=fmt, choices=tuple(FILE_NAMES))
    if uint8_input and fmt != "onnx":
        raise ConfigError("--uint8-input is for --format onnx (tflite and coreml always take "
                          "the image as it is).", key="--uint8-input", value=True)
    if int8 and fmt == "torchscript":
        raise ConfigError("--int8 quantizes with ONNX Runtime or for TFLite: use it with "
                          "--format onnx or tflite.", key="--int8", value=True)


def _write(model: nn.Module, fmt: str, path: Path, meta: dict[str, str], size: int) -> Runner:
    """Write the export, then load it back the way a user would: the runner to check."""
    if fmt == "onnx":
        write_onnx(model, path, meta, size)
        return onnx_runner(make_session(path))
    write_torchscript(model, path, meta, size)
    return torch_runner(load_torchscript(path)[0])


def _target(ckpt: dict, fmt: str, out: str | Path | None, uint8_input: bool,
            int8: bool = False, force: bool = False) -> Path:
    """Where the export goes, never onto an earlier one: by default `<run>/export/`, then
    `export-2/`, ... (the first folder where neither the file nor its int8 sibling exists);
    an `out` that names an existing file is replaced only with `force`."""
    name = "model.uint8.onnx" if uint8_input else FILE_NAMES[fmt]

    def taken(path: Path) -> list[Path]:
        return [p for p in (path, int8_path_for(path))[:1 + int8] if p.exists()]

    if not out:
        base = default_path(ckpt, fmt).parent
        for i in range(1, 10000):
            path = (base if i == 1 else base.with_name(f"{base.name}-{i}")) / name
            if force or not taken(path):
                return path
    path = Path(out)
    path = path / name if path.is_dir() and path.suffix != ".mlpackage" else path
    if taken(path) and not force:
        raise ConfigError(f"{taken(path)[0]} exists; export never replaces an earlier export. "
                          "Pick another --out, or pass --force to replace it.", key="--out",
                          value=str(taken(path)[0]))
    return path


def export_checkpoint(ckpt: dict, fmt: str, out: str | Path | None = None, *, int8: bool = False,
                      data: str | None = None, max_drop: float = 0.03,
                      uint8_input: bool = False, force: bool = False,
                      progress: Callable[[str], None] = lambda _msg: None,
                      latency_budget_s: float = 1.0) -> ExportReport:
    """Export `ckpt` as `fmt` (onnx | torchscript | tflite | coreml), check parity on
    validation images, and with `int8` also quantize (refused when accuracy drops by more
    than `max_drop`). tflite, coreml and onnx with `uint8_input` are apps' formats
    (`deploy.mobile`): uint8 image in, probabilities out. An earlier export is never
    replaced (see `_target`) unless `force`."""
    from mobiletune.model.checkpoint import model_from_checkpoint

    _check_format(fmt, int8, uint8_input)
    if fmt in ("tflite", "coreml") or uint8_input:
        from mobiletune.deploy.mobile import check_options, export_mobile

        check_options(fmt, int8)  # a missing extra is reported before any work
        target = _target(ckpt, fmt, out, uint8_input, int8, force)
        return export_mobile(ckpt, fmt, target, int8=int8,
                             data=data, max_drop=max_drop, progress=progress,
                             latency_budget_s=latency_budget_s)
    torch.set_flush_denormal(True)
    model, meta, pre = model_from_checkpoint(ckpt), metadata(ckpt), ckpt["preprocess"]
    train, val = check_samples(ckpt, data)  # before writing anything: fail early
    path = _target(ckpt, fmt, out, False, int8, force)
    progress(f"writing {path}")
    runners = {"pytorch": torch_runner(model), fmt: _write(model, fmt, path, meta, pre["crop"])}
    sizes = {"pytorch": state_dict_bytes(model), fmt: os.path.getsize(path)}
    final = int8_path_for(path) if int8 else None
    float_blocks = None
    with int8_partial(final) as tmp:
        if tmp:
            progress(f"calibrating int8 ranges on up to {CALIB_IMAGES} training images")
            # half the budget on calibration images leaves room for the val check below
            float_blocks = quantize_int8(
                path, tmp, *calibration_batches(train, pre), meta, n_blocks=len(model.features),
                budget=max_drop / 2, progress=progress).float_blocks
            runners["int8"] = onnx_runner(make_session(tmp))
            sizes["int8"] = os.path.getsize(tmp)
        progress(f"checking parity on {len(val)} validation images")
        res = collect(val, pre, runners)
        if tmp:
            keep_int8(res, fmt, max_drop, path, tmp, final)
    return checked_report(fmt, path, res, runners, sizes, final, float_blocks,
                          latency_budget_s, progress)
