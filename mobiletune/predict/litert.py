"""Running a .tflite file: ai-edge-litert (the `mobiletune[tflite]` extra), imported here
only. Exports are made by `deploy/tflite.py`; class names and preprocessing travel in the
flatbuffer's metadata table under "mobiletune" (a JSON object of the `onnxrt.META_KEYS`
strings)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np

from mobiletune.errors import CheckpointError, MissingExtraError

META_NAME = "mobiletune"


def need(feature: str = "TFLite export") -> None:
    """MissingExtraError (exit 2) unless the tflite extra is importable."""
    for module in ("litert_torch", "ai_edge_quantizer", "ai_edge_litert"):
        try:
            with quiet():  # importing them logs from C++ (absl, oneDNN)
                __import__(module)
        except ImportError:
            raise MissingExtraError(feature, "tflite", module) from None


@contextlib.contextmanager
def quiet():
    """litert-torch, its converter and the quantizer print progress and C++ logs to stdout
    and stderr: keep the user's terminal for our own messages (errors still raise)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            for fd in (1, 2):
                os.dup2(null.fileno(), fd)
            yield
        finally:
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The mobiletune metadata strings stored in a .tflite file ({} when there are none)."""
    from ai_edge_litert import schema_py_generated as schema

    try:
        data = Path(path).read_bytes()
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == META_NAME.encode():
                raw = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
                return {str(k): str(v) for k, v in json.loads(raw.decode("utf-8")).items()}
    except Exception as e:  # not a flatbuffer, truncated, or foreign JSON
        raise CheckpointError(f"{path} is not a readable TFLite file ({type(e).__name__}: "
                              f"{str(e)[:200]}); export the run again.") from None
    return {}


def open_interpreter(path: str | os.PathLike, threads: int | None = None):
    """uint8 NHWC crops -> probabilities, by ai-edge-litert; int8 outputs dequantized."""
    try:
        with quiet():  # LiteRT announces its CPU delegate on stderr
            from ai_edge_litert.interpreter import Interpreter

            it = Interpreter(model_path=str(path),
                             num_threads=threads or min(4, os.cpu_count() or 1))
            it.allocate_tensors()
    except Exception as e:
        raise CheckpointError(f"{path} could not be opened by LiteRT ({str(e)[:200]}); "
                              "export the run again.") from None
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zero = out["quantization"]
    shape: list[tuple] = [()]

    def run(crops: np.ndarray) -> np.ndarray:
        if crops.shape != shape[0]:  # the batch size is free: resize when it changes
            it.resize_tensor_input(inp["index"], list(crops.shape))
            it.allocate_tensors()
            shape[0] = crops.shape
        it.set_tensor(inp["index"], np.ascontiguousarray(crops, dtype=np.uint8))
        it.invoke()
        y = it.get_tensor(out["index"])
        return (y.astype(np.float32) - zero) * scale if scale else y.astype(np.float32)

    return run
