"""Run an exported model with ONNX Runtime alone: no torch, no checkpoint.

An exported `.onnx` file carries what prediction needs in its `metadata_props`:
`class_names` (JSON list, index i is logit i), `resize`, `crop`, `mean`, `std`. The graph
maps a float32 NCHW batch (already normalized) to logits; probabilities are a softmax here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mobiletune.errors import CheckpointError

META_KEYS = ("class_names", "resize", "crop", "mean", "std")


def make_session(model: str | Path | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session for a file path or serialized model bytes."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Flush denormals: random or near-zero weights otherwise take slow paths on x86.
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
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
            "written by `mobiletune export`. Export the run again with `mobiletune export "
            "--format onnx`.")
    try:
        names = json.loads(props["class_names"])
        spec = {"resize": int(props["resize"]), "crop": int(props["crop"]),
                "mean": [float(v) for v in json.loads(props["mean"])],
                "std": [float(v) for v in json.loads(props["std"])]}
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source} has malformed mobiletune metadata ({e}); export the "
                              "run again with `mobiletune export --format onnx`.") from None
    return [str(n) for n in names], spec


def preprocess_image(image, spec: dict) -> np.ndarray:
    """CHW float32 for one PIL image, as torchvision's Resize(resize) + CenterCrop(crop) +
    ToTensor + Normalize(mean, std) compute it, so deployment needs no torch."""
    from PIL import Image

    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(spec["resize"] * long / short)  # torchvision truncates, not rounds
    size = (spec["resize"], new_long) if w <= h else (new_long, spec["resize"])
    image = image.convert("RGB").resize(size, Image.BILINEAR)
    c, (w, h) = spec["crop"], image.size
    top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
    if top < 0 or left < 0:
        raise ValueError(f"resize {spec['resize']} is smaller than crop {c}")
    arr = np.asarray(image.crop((left, top, left + c, top + c)), dtype=np.float32) / 255.0
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    return ((arr - mean) / std).transpose(2, 0, 1).copy()


class OnnxPredictor:
    """Class names, preprocessing and an ONNX Runtime session for one exported model."""

    def __init__(self, session, class_names: list[str], preprocess: dict, path: str) -> None:
        self.session, self.class_names, self.preprocess, self.path = (
            session, class_names, preprocess, path)
        self.input_name = session.get_inputs()[0].name

    @classmethod
    def from_file(cls, path: str | Path, threads: int | None = None) -> "OnnxPredictor":
        """Open an exported `.onnx` file; CheckpointError when it is missing or not ours."""
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"ONNX file {p} not found. Create it with `mobiletune export "
                                  "--format onnx`, or pass an existing file.")
        try:
            session = make_session(p, threads)
        except Exception as e:  # ORT raises its own types for corrupt or truncated files
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise CheckpointError(f"{p} could not be opened by ONNX Runtime ({first}); "
                                  "export the run again.") from None
        props = dict(session.get_modelmeta().custom_metadata_map)
        names, spec = parse_metadata(props, str(p))
        return cls(session, names, spec, str(p))

    def predict_tensor(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) for a preprocessed NCHW float32 batch."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        (logits,) = self.session.run(None, {self.input_name: x})
        return softmax(logits)

    def predict_images(self, images: list) -> np.ndarray:
        """Class probabilities for PIL images, preprocessed as the metadata says."""
        return self.predict_tensor(np.stack([preprocess_image(i, self.preprocess)
                                             for i in images]))
