"""Predict classes of image files with a checkpoint that carries its own labels and preprocessing."""

from __future__ import annotations

import glob
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from mobiletune.checkpoint import load_checkpoint, model_from_checkpoint
from mobiletune.data import IMAGE_EXTENSIONS, load_image
from mobiletune.transforms import eval_transform
from mobiletune.errors import DataError


@dataclass
class Prediction:
    """One image's result: top-k labels with probabilities, or the error that stopped it."""

    path: str
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict:
        """The contract's JSON line."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "label": self.top_k[0][0], "confidence": self.top_k[0][1],
                "top_k": [{"label": lab, "prob": p} for lab, p in self.top_k]}


def expand_inputs(items: Iterable[str]) -> list[str]:
    """Files as given, folders recursively (image extensions only, sorted), globs expanded.
    A name that matches nothing is kept, so it gets its own error line."""
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.is_file()
                          and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."))
        elif not p.exists() and glob.has_magic(item):
            out += sorted(glob.glob(item, recursive=True)) or [item]
        else:
            out.append(item)
    return out


class Predictor:
    """A model plus its preprocessing and class names, ready for images."""

    # Exporting to ONNX Runtime costs a few seconds once, then runs 3-5x faster on CPU:
    # worth it from this many images on, or whenever the export is already cached.
    ORT_FROM = 64

    def __init__(self, model: torch.nn.Module | None, class_names: list[str], pre: dict,
                 engine: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.model, self.class_names, self.pre = model, list(class_names), pre
        self.transform = eval_transform(pre)
        self.engine = engine  # None: chosen on first use (see _engine)

    def _engine(self, n: int):
        """The fast path `train` uses for frozen compute: ONNX Runtime on CPU, cached."""
        if self.engine is None:
            from mobiletune.frozen.cache import cache_root
            from mobiletune.frozen.engine import TorchEngine, frozen_engine, onnx_cache_path

            cpu = torch.device("cpu")
            root, size = cache_root(), self.pre["crop"]
            if n >= self.ORT_FROM or onnx_cache_path(self.model, root, size).is_file():
                self.engine = frozen_engine(self.model, cpu, root, size)
            else:
                self.engine = TorchEngine(self.model, cpu)
        return self.engine

    @classmethod
    def from_checkpoint(cls, arg: str | os.PathLike | None) -> "Predictor":
        """From a run directory, a `.pt` checkpoint, or an exported `.onnx` file."""
        if arg is not None and str(arg).lower().endswith(".onnx"):
            return cls.from_onnx(arg)
        ckpt = load_checkpoint(arg)
        return cls(model_from_checkpoint(ckpt), ckpt["class_names"], ckpt["preprocess"])

    @classmethod
    def from_onnx(cls, path: str | os.PathLike) -> "Predictor":
        """An exported model run by ONNX Runtime alone; labels and preprocessing come from
        the file's metadata."""
        from mobiletune.deploy.runtime import OnnxPredictor

        onnx = OnnxPredictor.from_file(path)

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(onnx.session.run(None, {onnx.input_name: x.numpy()})[0])

        return cls(None, onnx.class_names, onnx.preprocess, engine=run)

    def _decode(self, path: str) -> torch.Tensor | str:
        try:
            return self.transform(load_image(path, self.pre["resize"]))
        except FileNotFoundError:
            return "file not found"
        except Exception as e:  # unreadable or not an image: reported on its own line
            return f"unreadable image: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}"

    def predict_probs(self, paths: list[str], batch_size: int = 32,
                      on_batch: Callable[[int], None] | None = None):
        """Probabilities [len(paths), C] (NaN rows where a file failed) and (path, error) pairs."""
        probs = np.full((len(paths), len(self.class_names)), np.nan, dtype=np.float32)
        errors: list[tuple[str, str]] = []
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start:start + batch_size]
                decoded = list(pool.map(self._decode, chunk))
                ok = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
                errors += [(chunk[i], d) for i, d in enumerate(decoded) if isinstance(d, str)]
                if ok:
                    logits = self._engine(len(paths))(torch.stack([decoded[i] for i in ok]))
                    probs[[start + i for i in ok]] = torch.softmax(logits.float(), 1).numpy()
                if on_batch:
                    on_batch(len(chunk))
        return probs, errors

    def predict(self, paths: list[str], top_k: int = 5, batch_size: int = 32,
                on_batch: Callable[[int], None] | None = None) -> list[Prediction]:
        """Top-k predictions in input order; unreadable files get an error instead."""
        probs, errors = self.predict_probs(paths, batch_size, on_batch)
        err = dict(errors)
        k = max(1, min(top_k, len(self.class_names)))
        out = []
        for path, row in zip(paths, probs):
            if path in err:
                out.append(Prediction(path, error=err[path]))
                continue
            order = np.argsort(-row)[:k]
            out.append(Prediction(path, [(self.class_names[j], round(float(row[j]), 6))
                                         for j in order]))
        return out


def require_some(preds: list[Prediction]) -> None:
    """Exit 2 (DataError) when no input could be read at all."""
    if preds and all(p.error for p in preds):
        raise DataError(f"None of the {len(preds)} input(s) could be read as an image "
                        f"(first: {preds[0].path}: {preds[0].error}).")
    if not preds:
        raise DataError("No input images given; pass files, folders or globs.")
