"""TFLite: convert with litert-torch, quantize with ai-edge-quantizer, run with ai-edge-litert.

All three come with the optional extra `mobiletune[tflite]` and are imported here only. The
model takes uint8 NHWC crops and gives probabilities (`mobile.UInt8Classifier`); class names
and preprocessing travel in the flatbuffer's own metadata table under "mobiletune" (a JSON
object of the `runtime.META_KEYS` strings), which quantization keeps.
"""

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
            with _quiet():  # importing them logs from C++ (absl, oneDNN)
                __import__(module)
        except ImportError:
            raise MissingExtraError(feature, "tflite", module) from None


@contextlib.contextmanager
def _quiet():
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


def _with_metadata(model: bytes, meta: dict[str, str]) -> bytes:
    """`model` with `meta` added to its metadata table (a new buffer holds the JSON)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    buf = schema.BufferT()
    buf.data = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    m.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name, entry.buffer = META_NAME, len(m.buffers) - 1
    m.metadata = [e for e in (m.metadata or []) if e.name != META_NAME.encode()] + [entry]
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def convert(wrapper, crop: int, meta: dict[str, str]) -> bytes:
    """The float .tflite bytes of a uint8-input module, metadata inside."""
    import torch

    with _quiet():
        import litert_torch

        edge = litert_torch.convert(wrapper.eval(), (torch.zeros(1, crop, crop, 3, dtype=torch.uint8),))
        data = edge.tflite_model() if hasattr(edge, "tflite_model") else edge.model_content()
    return _with_metadata(bytes(data), meta)


def quantize(float_model: bytes, calibration: list[np.ndarray]) -> bytes:
    """Full-integer int8 (ai-edge-quantizer's static_wi8_ai8: int8 weights and activations,
    min/max ranges from `calibration` uint8 batches); input stays uint8, metadata kept."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    sigs = Interpreter(model_content=float_model).get_signature_list()
    key = next(iter(sigs))
    name = sigs[key]["inputs"][0]
    with _quiet():
        q = quantizer.Quantizer(bytearray(float_model))
        q.load_quantization_recipe(recipe.static_wi8_ai8())
        ranges = q.calibrate({key: [{name: c[None]} for batch in calibration for c in batch]})
        return bytes(q.quantize(ranges, enable_progress_report=False).quantized_model)


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
        with _quiet():  # LiteRT announces its CPU delegate on stderr
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
