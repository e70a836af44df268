"""The Python API, and what `mobiletune predict` runs: one predictor for every format.

    import mobiletune
    model = mobiletune.load("runs/cats")          # run dir, .pt, TorchScript .pt, .onnx, .tflite
    for r in model.predict(["a.jpg", "b.jpg"]):   # paths or PIL images
        print(r.label, r.score, r.probs)          # probs: class name -> probability

Every format decodes and crops the same way (`data/preprocess.crop_uint8`), so a file predicts the
same label whichever export runs it.
"""

from __future__ import annotations

import glob
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from mobiletune.data.images import load_image
from mobiletune.data.preprocess import crop_uint8
from mobiletune.data.walk import images_under
from mobiletune.errors import DataError
from mobiletune.parallel import Completed, calling, workers
from mobiletune.predict.backends import Backend, open_backend


@dataclass
class Prediction:
    """One image's result: `label`, `score`, `probs` (class -> probability), `top_k`; or the
    `error` that stopped it (then `label` is None). `path` is None for a PIL image."""

    path: str | None
    probs: dict[str, float] = field(default_factory=dict)
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.top_k[0][0] if self.top_k else None

    @property
    def score(self) -> float | None:
        return self.top_k[0][1] if self.top_k else None

    @property
    def confidence(self) -> float | None:
        """`score` under its old name (predict --json's "confidence"), kept for one release."""
        return self.score

    def to_json(self) -> dict:
        """The contract's JSON line, in the names the API and `explain --json` share (label,
        score); "confidence" and "prob" repeat them under their old names for one release."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        score = round(self.score, 6)
        return {"path": self.path, "label": self.label, "score": score, "confidence": score,
                "top_k": [{"label": lab, "score": round(p, 6), "prob": round(p, 6)}
                          for lab, p in self.top_k]}


def expand_inputs(items: Iterable[str]) -> list[str]:
    """Files as given, folders recursively (image extensions only, sorted), globs expanded.
    A name that matches nothing is kept, so it gets its own error line."""
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += images_under(p)
        elif not p.exists() and glob.has_magic(item):
            out += sorted(glob.glob(item, recursive=True)) or [item]
        else:
            out.append(item)
    return out


def input_error(e: Exception) -> str:
    """Why an input could not be read, in a few words (a JSON line's "error")."""
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, IsADirectoryError):
        return "is a folder, not an image"
    return f"unreadable image: {str(e).splitlines()[0][:160] if str(e) else type(e).__name__}"


class Predictor:
    """A loaded model with its class names and preprocessing, ready for images."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.class_names: list[str] = list(backend.class_names)
        self.preprocess: dict = dict(backend.preprocess)
        self.kind: str = backend.kind  # pytorch | torchscript | onnx | tflite
        self.info: dict[str, Any] = dict(backend.info)

    def _crop(self, item) -> np.ndarray | str:
        """The uint8 crop of a path or PIL image, or why it failed."""
        try:
            image = item if not isinstance(item, (str, os.PathLike)) else \
                load_image(item, self.preprocess["resize"])
            return crop_uint8(image, self.preprocess)
        except Exception as e:  # unreadable or not an image: reported on its own line
            return input_error(e)

    def predict_probs(self, images: Sequence, batch_size: int = 32,
                      on_batch: Callable[[int], None] | None = None
                      ) -> tuple[np.ndarray, list[tuple[Any, str]]]:
        """Probabilities [len(images), C] (NaN rows where an input failed) and (input, error)
        pairs in input order, for paths or PIL images. One worker per core decodes a batch
        and runs the model on it (mobiletune/parallel.py)."""
        probs = np.full((len(images), len(self.class_names)), np.nan, dtype=np.float32)
        errors: list[tuple[int, str]] = []
        self.backend.prepare(len(images))
        if self.backend.concurrent:  # smaller batches: less idle time at the end
            batch_size = min(batch_size, 16)
        batches = [range(s, min(s + batch_size, len(images)))
                   for s in range(0, len(images), batch_size)]
        lock = threading.Lock()

        def work(idx: range) -> tuple[list[int], list[tuple[int, str]], np.ndarray | None]:
            crops = [self._crop(images[i]) for i in idx]
            ok = [(i, c) for i, c in zip(idx, crops) if not isinstance(c, str)]
            bad = [(i, c) for i, c in zip(idx, crops) if isinstance(c, str)]
            if not ok:
                return [], bad, None
            with calling(self.backend, lock):
                return [i for i, _ in ok], bad, self.backend.run(np.stack([c for _, c in ok]))

        with ThreadPoolExecutor(workers(), thread_name_prefix="predict") as pool:
            for idx, (ok, bad, out) in Completed(pool, work, batches, workers()):
                if ok:
                    probs[ok] = out
                errors += bad
                if on_batch:
                    on_batch(len(idx))
        return probs, [(images[i], why) for i, why in sorted(errors)]

    def predict(self, images, top_k: int = 5, batch_size: int = 32,
                on_batch: Callable[[int], None] | None = None) -> list[Prediction]:
        """One Prediction per input, in order, for paths or PIL images (one or a list);
        an input that cannot be read gets `error` instead of a label."""
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
            images = [images]
        probs, errors = self.predict_probs(images, batch_size, on_batch)
        failed = iter(why for _, why in errors)  # in input order, one per NaN row
        k = max(1, min(top_k, len(self.class_names)))
        out = []
        for item, row in zip(images, probs):
            path = str(item) if isinstance(item, (str, os.PathLike)) else None
            if np.isnan(row).any():
                out.append(Prediction(path, error=next(failed)))
                continue
            order = np.argsort(-row, kind="stable")[:k]
            out.append(Prediction(path, {c: float(p) for c, p in zip(self.class_names, row)},
                                  [(self.class_names[j], float(row[j])) for j in order]))
        return out


def load(path: str | os.PathLike | None = None) -> Predictor:
    """A predictor for a run directory, a `.pt` checkpoint, or an exported TorchScript,
    `.onnx` or `.tflite` file (None: `runs/latest`). TorchScript and ONNX files are programs:
    load them only from sources you trust."""
    return Predictor(open_backend(path))


def require_some(preds: list[Prediction]) -> None:
    """DataError (exit 2) when no input was given or none could be read at all."""
    if not preds:
        raise DataError("No input images given; pass files, folders or globs.")
    if all(p.error for p in preds):
        raise DataError(f"None of the {len(preds)} input(s) could be read as an image "
                        f"(first: {preds[0].path}: {preds[0].error}).")
