"""What every export file carries, whatever its format: its file name, the metadata strings
(class names, preprocessing, provenance) and PyTorch's size for comparison."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn


def metadata(ckpt: dict) -> dict[str, str]:
    """The strings stored in an exported file: what predicting needs, plus provenance."""
    pre = ckpt["preprocess"]
    return {"class_names": json.dumps(list(ckpt["class_names"])),
            "mean": json.dumps([float(v) for v in pre["mean"]]),
            "std": json.dumps([float(v) for v in pre["std"]]),
            "resize": str(int(pre["resize"])), "crop": str(int(pre["crop"])),
            "arch": ckpt["arch"], "producer": "mobiletune"}


def state_dict_bytes(model: nn.Module) -> int:
    """Size of the model's state_dict as torch.save writes it: PyTorch's size on disk."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.pt", "tflite": "model.tflite",
              "coreml": "model.mlpackage"}


def default_path(ckpt: dict, fmt: str) -> Path:
    """`<run>/export/model.onnx` (model.pt, model.tflite, model.mlpackage), beside the run."""
    return Path(ckpt["path"]).parent / "export" / FILE_NAMES[fmt]
