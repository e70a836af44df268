"""Run an exported model with ONNX Runtime alone: no torch, no checkpoint.

An exported `.onnx` file carries what prediction needs in its `metadata_props`:
`class_names` (JSON list, index i is logit i), `resize`, `crop`, `mean`, `std`. A float graph
maps a normalized float32 NCHW batch to logits; `deploy.backends` opens it for prediction.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mobiletune.errors import CheckpointError
from mobiletune.fileio import atomic_write

META_KEYS = ("class_names", "resize", "crop", "mean", "std")


def make_session(model: str | Path | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session for a file path or serialized model bytes."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Flush denormals: random or near-zero weights otherwise take slow paths on x86.
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    # Idle ORT threads otherwise spin after each run and starve PyTorch's OpenMP threads
    # in the same process (export and profile time both): measured 10x slower PyTorch.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # keep ORT's warnings off the user's terminal
    if threads:
        opts.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def parse_metadata(props: dict[str, str], source: str) -> tuple[list[str], dict]:
    """(class_names, preprocess spec) from an exported file's metadata strings."""
    missing = [k for k in META_KEYS if k not in props]
    if missing:
        raise CheckpointError(
            f"{source} lacks the metadata mobiletune needs ({', '.join(missing)}): it was not "
            "written by `mobiletune export`. Export the run again with `mobiletune export`.")
    try:
        names = json.loads(props["class_names"])
        spec = {"resize": int(props["resize"]), "crop": int(props["crop"]),
                "mean": [float(v) for v in json.loads(props["mean"])],
                "std": [float(v) for v in json.loads(props["std"])]}
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source} has malformed mobiletune metadata ({e}); export the "
                              "run again with `mobiletune export`.") from None
    return [str(n) for n in names], spec


def resize_short(image, resize: int):
    """RGB PIL image with its short side `resize`, as torchvision's Resize(int) makes it."""
    from PIL import Image

    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(resize * long / short)  # torchvision truncates, not rounds
    size = (resize, new_long) if w <= h else (new_long, resize)
    return image.convert("RGB").resize(size, Image.BILINEAR)


def center_box(size: tuple[int, int], crop: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's CenterCrop(crop) in an image of `size`."""
    w, h = size
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    if top < 0 or left < 0:
        raise ValueError(f"image {w}x{h} is smaller than crop {crop}")
    return left, top, left + crop, top + crop


def crop_uint8(image, spec: dict) -> np.ndarray:
    """HWC uint8 center crop of one PIL image, as torchvision's Resize(resize) +
    CenterCrop(crop) compute it: what every exported model and every backend starts from."""
    image = resize_short(image, spec["resize"])
    return np.asarray(image.crop(center_box(image.size, spec["crop"])), dtype=np.uint8)


def normalize(crops: np.ndarray, spec: dict) -> np.ndarray:
    """NCHW float32 for a uint8 NHWC batch: ToTensor + Normalize(mean, std)."""
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    x = (crops.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess_image(image, spec: dict) -> np.ndarray:
    """CHW float32 for one PIL image, equal to the eval transform, with no torch."""
    return normalize(crop_uint8(image, spec)[None], spec)[0]


class _Reader:
    """The CalibrationDataReader protocol over preprocessed batches of training images."""

    def __init__(self, batches: list[np.ndarray], input_name: str) -> None:
        self._it = iter([{input_name: b} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._it, None)


def _float_tail(names: list[str], n_blocks: int, k: int) -> list[str]:
    """Graph nodes outside `features[:n_blocks - k]`: the last k blocks, pooling and head.

    The exporter names nodes after module paths (`/features/features.17/...`); quantization
    error accumulates towards the output, so the tail is where float helps most for the
    fewest multiply-adds (the last MobileNet blocks run at 7x7).
    """
    if k == 0:
        return []
    keep = []
    for name in names:
        m = re.match(r"/features/features\.(\d+)/", name)
        if m is None or int(m.group(1)) >= n_blocks - k:
            keep.append(name)
    return keep


def _accuracy(model: str | Path, batches: list[np.ndarray], labels: np.ndarray) -> float:
    session = make_session(model)
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: b})[0] for b in batches])
    return float((logits.argmax(1) == labels).mean())


@dataclass
class Int8Result:
    """The int8 model written, how much of it stayed float, and its calibration accuracy."""

    path: Path
    float_blocks: int  # trailing blocks of `features` (and the head) kept float; 0 = all int8
    calib_accuracy: tuple[float, float]  # (float, int8) on the calibration images


def quantize_int8(float_path: str | Path, out_path: str | Path, batches: list[np.ndarray],
                  labels: np.ndarray, meta: dict[str, str], *, n_blocks: int, budget: float,
                  max_float_blocks: int = 6,
                  progress: Callable[[str], None] = lambda _msg: None) -> Int8Result:
    """Static int8 (QDQ, per-channel weights, MinMax ranges from `batches`), metadata kept.

    When the int8 model's accuracy on the calibration images falls more than `budget` below
    the float model's, the last 1, 2, ... `max_float_blocks` blocks and the head stay float
    (mixed precision), and the first that meets the budget is written (else the last tried).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        prepped, quant = Path(tmp) / "prep.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(float_path), str(prepped), skip_symbolic_shape=True)
        graph = onnx.load(str(prepped)).graph
        names, input_name = [n.name for n in graph.node], graph.input[0].name
        ref, last = _accuracy(prepped, batches, labels), min(max_float_blocks, n_blocks)
        for k in range(0, last + 1):
            # ranges are calibrated once and cached: later tries only re-quantize
            quantize_static(str(prepped), str(quant), _Reader(batches, input_name),
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            nodes_to_exclude=_float_tail(names, n_blocks, k),
                            calibration_cache_path=str(Path(tmp) / "ranges.json"))
            acc = _accuracy(quant, batches, labels)
            if ref - acc <= budget:
                break
            done = f"the last {k} block(s) float" if k else "all int8"
            then = f"; next: the last {k + 1} block(s) and the head float" if k < last else ""
            progress(f"int8 ({done}) scores {acc:.3f} on the calibration images against "
                     f"float {ref:.3f}{then}")
        proto = onnx.load(str(quant))
        onnx.helper.set_model_props(proto, {**meta, "int8_float_blocks": str(k)})
        data = proto.SerializeToString()
    return Int8Result(atomic_write(out_path, lambda f: f.write(data)), k, (ref, acc))
