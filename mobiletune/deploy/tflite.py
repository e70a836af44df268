"""TFLite: convert with litert-torch, quantize with ai-edge-quantizer, run with ai-edge-litert.

All three come with the optional extra `mobiletune[tflite]` and are imported here only. The
model takes uint8 NHWC crops and gives probabilities (`mobile.UInt8Classifier`); class names
and preprocessing travel in the flatbuffer's own metadata table under "mobiletune" (a JSON
object of the `onnxrt.META_KEYS` strings; `predict/litert.py` reads it back), which quantization keeps.
"""

from __future__ import annotations

import json

import numpy as np

from mobiletune.predict.litert import META_NAME, quiet


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

    with quiet():
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
    with quiet():
        q = quantizer.Quantizer(bytearray(float_model))
        q.load_quantization_recipe(recipe.static_wi8_ai8())
        ranges = q.calibrate({key: [{name: c[None]} for batch in calibration for c in batch]})
        return bytes(q.quantize(ranges, enable_progress_report=False).quantized_model)


