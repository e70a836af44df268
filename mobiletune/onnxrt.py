"""ONNX at the bottom of the stack: export a module to bytes, open CPU sessions, read the
metadata an exported file carries, and time a call. It imports nothing of mobiletune but its errors.

An exported `.onnx` file carries what prediction needs in its `metadata_props`:
`class_names` (JSON list, index i is logit i), `resize`, `crop`, `mean`, `std`.
"""

from __future__ import annotations

import io
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from mobiletune.errors import CheckpointError

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


OPSET = 17


def onnx_bytes(module, size: int, output: str = "logits", example=None) -> bytes:
    """Serialized ONNX of the torch `module` (eval), input N x 3 x size x size (or shaped like
    `example`, e.g. N x size x size x 3 uint8 for a `Normalized` module), dynamic batch.

    The TorchScript-based exporter (dynamo=False) is deprecated, but takes 0.3 s where the
    dynamo exporter takes 10 s here for the same, numerically identical graph.
    """
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = example if example is not None else torch.zeros(1, 3, size, size)
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False,
                          opset_version=OPSET, input_names=["input"], output_names=[output],
                          dynamic_axes={"input": {0: "batch"}, output: {0: "batch"}})
    return buf.getvalue()


def time_ms(fn: Callable[[], object], min_runs: int = 3, budget_s: float = 1.0,
            warmup: int = 1) -> float:
    """Median wall time of `fn()` in milliseconds, after `warmup` untimed calls.

    Runs at least `min_runs` times and keeps going until `budget_s` is spent, so fast
    calls get many samples and slow ones few.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)
