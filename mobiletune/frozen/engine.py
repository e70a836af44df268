"""The fastest engine for frozen compute: ONNX Runtime on CPU, PyTorch (autocast) on GPU.

On this kind of CPU, ONNX Runtime runs a frozen MobileNet 1.6x (V3-Small) to 3.7x (V2)
faster than PyTorch eager (docs/performance.md), so frozen prefixes are exported once (cached by
the hash of their weights) and run there.
PyTorch with channels_last is the fallback when export or ONNX Runtime fails.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobiletune.data.preprocess import Normalized
from mobiletune.onnxrt import onnx_bytes


def module_digest(module: nn.Module, extra: str = "") -> str:
    """A hash of a module's weights and buffers (names, shapes, values): its identity."""
    h = hashlib.sha256(extra.encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


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

    def __init__(self, onnx_path: Path | bytes, concurrent: bool = False) -> None:
        """A file or the serialized model itself. `concurrent`: run each call on the caller's thread alone (one intra-op thread), for
        callers that call from one thread per core (frozen/fill.py); else use every core."""
        from mobiletune.onnxrt import make_session

        self.concurrent = concurrent
        self.session = make_session(onnx_path, 1 if concurrent else torch.get_num_threads())
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = x.numpy()
        if a.dtype != np.uint8:  # uint8 pixels (a Normalized export) stay uint8
            a = a.astype(np.float32, copy=False)
        out = self.session.run(None, {self.input: a})[0]
        return torch.from_numpy(np.ascontiguousarray(out))


def export_onnx(module: nn.Module, path: Path, size: int,
                example: torch.Tensor | None = None) -> Path:
    """Export a frozen prefix into the cache, whole or not at all, with the digest of its
    bytes beside it (`<name>.onnx.sha256`, written last) so a damaged file is never run."""
    from mobiletune.fileio import atomic_write, write_text

    data = onnx_bytes(module, size, output="features", example=example)
    atomic_write(path, lambda f: f.write(data))
    write_text(_digest_path(path), hashlib.sha256(data).hexdigest())
    return path


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _cached_engine(path: Path, concurrent: bool) -> OrtEngine | None:
    """The cached export at `path` when its bytes are the ones exported and ONNX Runtime
    opens it; else None, with a damaged file set aside (an export without its digest,
    from before digests existed, is simply made again)."""
    from mobiletune.frozen.integrity import set_aside

    digest = _digest_path(path)
    try:
        want = digest.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if hashlib.sha256(path.read_bytes()).hexdigest() != want:
        set_aside([path, digest], f"engine {path.name}", "differs from what was exported")
        return None
    try:
        return OrtEngine(path, concurrent)
    except Exception as e:  # noqa: BLE001 - any load failure means: export again
        set_aside([path, digest], f"engine {path.name}", f"does not load ({type(e).__name__})")
        return None


def onnx_cache_path(module: nn.Module, cache_dir: Path, size: int) -> Path:
    """Where the ONNX export of `module` (at this input size) lives in the cache."""
    return cache_dir / "engines" / f"{module_digest(module, str(size))}.onnx"


def frozen_engine(module: nn.Module, device: torch.device, cache_dir: Path | None, size: int,
                  prefer: str = "auto", pixels: dict | None = None, concurrent: bool = False,
                  example: torch.Tensor | None = None, keep: bool = True):
    """ONNX Runtime on CPU when it is available and exports cleanly; PyTorch otherwise.
    The export is read from `cache_dir` when it is there; else made, and written there only
    with `keep` (a cache fill keeps it; predict uses it from memory and writes nothing).
    With `pixels` (a preprocessing spec: mean, std) the engine takes uint8 NHWC images;
    `example` gives any other input shape (a `size` x `size` map of it keys the export);
    `concurrent` asks for one thread per call where the engine allows it (OrtEngine)."""
    if pixels is not None:
        module = Normalized(module, pixels["mean"], pixels["std"])
        if example is None:  # the engine takes uint8 NHWC pixels
            example = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    if device.type != "cpu" or prefer == "pytorch" or cache_dir is None:
        return TorchEngine(module, device)
    try:
        path = onnx_cache_path(module, cache_dir, size)
        cached = _cached_engine(path, concurrent) if path.is_file() else None
        if cached is not None:
            return cached
        if not keep:
            return OrtEngine(onnx_bytes(module, size, "features", example), concurrent)
        return OrtEngine(export_onnx(module, path, size, example), concurrent)
    except Exception:  # no onnxruntime, an op it lacks: PyTorch is slower but always works
        return TorchEngine(module, device)
