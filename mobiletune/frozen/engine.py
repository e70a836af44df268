"""The fastest engine for frozen compute: ONNX Runtime on CPU, PyTorch (autocast) on GPU.

On this kind of CPU, ONNX Runtime runs a frozen MobileNet 1.6x (V3-Small) to 3.7x (V2)
faster than PyTorch eager (README table), so frozen prefixes are exported once (cached by
the hash of their weights) and run there.
PyTorch with channels_last is the fallback when export or ONNX Runtime fails.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


def module_digest(module: nn.Module, extra: str = "") -> str:
    """A hash of a module's weights and buffers (names, shapes, values): its identity."""
    h = hashlib.sha256(extra.encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


class Normalized(nn.Module):
    """uint8 NHWC pixels in, `module` out: the weights' normalization (x / 255 - mean) / std
    runs inside the engine, so decode threads hand over raw pixels and never run float
    tensor code (which was 15x their cost in ToTensor + Normalize on a busy 2-core machine)."""

    def __init__(self, module: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.module = module
        sd = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * sd))
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) / sd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.permute(0, 3, 1, 2).float() * self.scale - self.shift)


class TorchEngine:
    """Frozen forward in PyTorch: inference mode, channels_last, fp16 autocast on CUDA."""

    name = "pytorch"

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module, self.device = module.eval(), device
        self.module = self.module.to(device, memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if self.device.type == "cuda":
                # pinned host memory: the copy overlaps with the previous batch's compute
                x = x.pin_memory().to(self.device, non_blocking=True)
                if x.dtype != torch.uint8:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.float16):
                    return self.module(x).float().contiguous()
            if x.dtype != torch.uint8:  # uint8 NHWC pixels are channels_last already
                x = x.contiguous(memory_format=torch.channels_last)
            return self.module(x).contiguous()


class OrtEngine:
    """Frozen forward in ONNX Runtime, from a model exported once into the cache."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, concurrent: bool = False) -> None:
        """`concurrent`: run each call on the caller's thread alone (one intra-op thread), for
        callers that call from one thread per core (frozen/fill.py); else use every core."""
        from mobiletune.deploy.runtime import make_session

        self.concurrent = concurrent
        self.session = make_session(onnx_path, 1 if concurrent else torch.get_num_threads())
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = x.numpy()
        if a.dtype != np.uint8:  # uint8 pixels (a Normalized export) stay uint8
            a = a.astype(np.float32, copy=False)
        out = self.session.run(None, {self.input: a})[0]
        return torch.from_numpy(np.ascontiguousarray(out))


OPSET = 17


def onnx_bytes(module: nn.Module, size: int, output: str = "logits",
               example: torch.Tensor | None = None) -> bytes:
    """Serialized ONNX of `module` (eval), input N x 3 x size x size (N x size x size x 3
    uint8 for a `Normalized` module, or shaped like `example`) with a dynamic batch.

    The TorchScript-based exporter (dynamo=False) is deprecated, but takes 0.3 s where the
    dynamo exporter takes 10 s here for the same, numerically identical graph.
    """
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = example if example is not None else \
            torch.zeros(1, size, size, 3, dtype=torch.uint8) if isinstance(module, Normalized) \
            else torch.zeros(1, 3, size, size)
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False,
                          opset_version=OPSET, input_names=["input"], output_names=[output],
                          dynamic_axes={"input": {0: "batch"}, output: {0: "batch"}})
    return buf.getvalue()


def export_onnx(module: nn.Module, path: Path, size: int,
                example: torch.Tensor | None = None) -> Path:
    """Export a frozen prefix into the cache, whole or not at all."""
    from mobiletune.fileio import atomic_write

    data = onnx_bytes(module, size, output="features", example=example)
    return atomic_write(path, lambda f: f.write(data))


def onnx_cache_path(module: nn.Module, cache_dir: Path, size: int) -> Path:
    """Where the ONNX export of `module` (at this input size) lives in the cache."""
    return cache_dir / "engines" / f"{module_digest(module, str(size))}.onnx"


def frozen_engine(module: nn.Module, device: torch.device, cache_dir: Path | None, size: int,
                  prefer: str = "auto", pixels: dict | None = None, concurrent: bool = False,
                  example: torch.Tensor | None = None):
    """ONNX Runtime on CPU when it is available and exports cleanly; PyTorch otherwise.
    With `pixels` (a preprocessing spec: mean, std) the engine takes uint8 NHWC images;
    `example` gives any other input shape (a `size` x `size` map of it keys the export);
    `concurrent` asks for one thread per call where the engine allows it (OrtEngine)."""
    if pixels is not None:
        module = Normalized(module, pixels["mean"], pixels["std"])
    if device.type != "cpu" or prefer == "pytorch" or cache_dir is None:
        return TorchEngine(module, device)
    try:
        path = onnx_cache_path(module, cache_dir, size)
        if not path.is_file():
            export_onnx(module, path, size, example)
        return OrtEngine(path, concurrent)
    except Exception:  # no onnxruntime, an op it lacks: PyTorch is slower but always works
        return TorchEngine(module, device)
