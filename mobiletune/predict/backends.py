"""Open any model mobiletune writes, as one thing: class names, preprocessing, and a function
from a uint8 NHWC batch of center crops to class probabilities.

Every format shares the same decoding and crop (`data/preprocess.crop_uint8`); float models normalize
the crop here, exports made with a uint8 input (TFLite, `onnx --uint8-input`) do it inside.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mobiletune.data.preprocess import normalize
from mobiletune.errors import CheckpointError
from mobiletune.onnxrt import META_KEYS, make_session, parse_metadata, softmax

Run = Callable[[np.ndarray], np.ndarray]  # uint8 NHWC crops -> probabilities (N, classes)


@dataclass(frozen=True)
class Backend:
    """A loaded model: what `Predictor` needs, whatever the file format."""

    run: Run
    class_names: list[str]
    preprocess: dict  # resize, crop, mean, std
    kind: str  # pytorch | torchscript | onnx | tflite
    info: dict[str, Any] = field(default_factory=dict)
    # told how many images are coming before the first batch (the PyTorch backend picks
    # its engine by it)
    prepare: Callable[[int], None] = lambda _n: None
    module: Any = None  # the PyTorch model, for a checkpoint (explain needs its gradients)
    # whether `run` may be called from one thread per core at once, each call using one core
    # (mobiletune/parallel.py); else calls come one at a time. The PyTorch backend knows
    # only once `prepare` has picked its engine, so this is asked, not stored.
    is_concurrent: Callable[[], bool] = lambda: False

    @property
    def concurrent(self) -> bool:
        return self.is_concurrent()


def is_torchscript(path: str | os.PathLike) -> bool:
    """True when `path` is a TorchScript archive: a zip whose records hold compiled `code/`
    and `constants.pkl`. torch.save checkpoints have neither, so the layout decides, never a
    failed safe load."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n.split("/", 1)[-1] for n in z.namelist()]
    except (OSError, zipfile.BadZipFile):
        return False
    return "constants.pkl" in names and any(n.startswith("code/") for n in names)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def float_runner(logits_fn: Callable[[np.ndarray], np.ndarray], pre: dict) -> Run:
    """A Run for a model taking normalized float32 NCHW and giving logits."""
    return lambda crops: softmax(logits_fn(normalize(crops, pre)))


def torch_backend(model, class_names: list[str], pre: dict, info: dict,
                  unfrozen: int = 0, cached_at: int = 0) -> Backend:
    """A PyTorch module; for large batches of work, its frozen part (all but the last
    `unfrozen` blocks and the head: what training left as pretrained) goes to ONNX Runtime
    (see `_engine_for`). `cached_at`: the finetune depth its run cached at (a head-only run's
    cache holds the export of the blocks before that boundary)."""
    import torch

    engine: list = []

    def prepare(n: int) -> None:
        if not engine:
            engine.append(_engine_for(model, pre, n, unfrozen, cached_at))

    def run(crops: np.ndarray) -> np.ndarray:
        prepare(len(crops))
        with torch.inference_mode():
            return softmax(engine[0](torch.from_numpy(np.ascontiguousarray(crops))).float().numpy())

    return Backend(run, list(class_names), pre, "pytorch", info, prepare, model,
                   lambda: bool(engine and getattr(engine[0], "concurrent", False)))


# Exporting to ONNX Runtime costs a few seconds once, then runs 3x faster on CPU: worth it
# from this many images on, or whenever the export is already cached.
ORT_FROM = 64


def _engine_for(model, pre: dict, n: int, unfrozen: int = 0, cached_at: int = 0):
    """uint8 NHWC crops -> logits, the fast way for `n` images. The part training left
    frozen (model.split at `unfrozen`: HeadPrefix for a head-only run, features[:k] for a
    fine-tuned one) runs in ONNX Runtime: the very file the run's cache fill exported, so
    scoring a run exports nothing. A head-only run's fill exported only the blocks before
    the finetune boundary (`cached_at`): those run from that file and the rest of the frozen
    part in PyTorch beside the head (3 small blocks: 0.1 s for 153 images, where exporting
    the whole backbone again took 0.4 s). Without a cached export, one made in memory.
    For a few images with nothing cached, all of it runs in PyTorch."""
    import torch

    from mobiletune.data.preprocess import Normalized
    from mobiletune.frozen.cache import cache_root
    from mobiletune.frozen.engine import TorchEngine, frozen_engine, onnx_cache_path
    from mobiletune.model.backbone import split

    cpu, root, size = torch.device("cpu"), cache_root(), pre["crop"]

    def ort(prefix, tail) -> _TailOn:
        # the run's own export when its cache has it; never a new file in the training cache
        features = frozen_engine(prefix.eval(), cpu, root, size, pixels=pre, concurrent=True,
                                 keep=False)
        return _TailOn(features, tail.eval())

    def cached(prefix) -> bool:  # a digest of the prefix's weights: only when it decides anything
        return onnx_cache_path(Normalized(prefix, pre["mean"], pre["std"]), root, size).is_file()

    prefix, tail = split(model, unfrozen)
    if not len(list(prefix.parameters())):
        return TorchEngine(Normalized(model, pre["mean"], pre["std"]), cpu)
    # the boundary a head run's fill exported first: a fill never exports HeadPrefix now
    if cached_at > unfrozen and cached((deeper := split(model, cached_at))[0]):
        return ort(*deeper)
    if n >= ORT_FROM or cached(prefix):
        return ort(prefix, tail)
    return TorchEngine(Normalized(model, pre["mean"], pre["std"]), cpu)


class _TailOn:
    """The trained tail on top of a frozen-part engine, as concurrent as that engine (a tail
    of a few 7x7 blocks is small next to the prefix: one call per core was measured faster
    than one call at a time, 1.3-1.4 s against 1.6 s for 153 images)."""

    def __init__(self, features, tail) -> None:
        import torch

        from mobiletune.model.backbone import has_depthwise

        self.features, self.tail = features, tail
        self.concurrent = getattr(features, "concurrent", False)
        # the tail's input layout as training gave it (model.backbone.has_depthwise)
        self.layout = torch.channels_last if has_depthwise(tail) else torch.contiguous_format

    def __call__(self, x):
        return self.tail(self.features(x).contiguous(memory_format=self.layout))


def load_torchscript(path: str | os.PathLike):
    """A saved TorchScript module (eval mode) and its metadata strings. A TorchScript file
    is a program: call this only on files recognised by `is_torchscript`, from sources you
    trust."""
    import torch

    extra = {k: "" for k in META_KEYS}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
    except Exception as e:
        raise CheckpointError(f"TorchScript file {path} could not be loaded ({_first_line(e)}); "
                              "export the run again.") from None
    return module, {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items() if v}


def torchscript_backend(path: Path) -> Backend:
    """mobiletune's TorchScript export."""
    import torch

    module, props = load_torchscript(path)
    names, pre = parse_metadata(props, str(path))

    def logits(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).float().numpy()

    return Backend(float_runner(logits, pre), names, pre, "torchscript", {"model": str(path)})


def onnx_backend(path: Path, threads: int | None = None) -> Backend:
    """An exported ONNX file, run by ONNX Runtime alone; labels and preprocessing come from
    its metadata. Float exports take normalized NCHW and give logits; `--uint8-input`
    exports take the crops as they are and give probabilities."""
    try:
        session = make_session(path, threads)
    except Exception as e:  # ORT raises its own types for corrupt or truncated files
        raise CheckpointError(f"{path} could not be opened by ONNX Runtime ({_first_line(e)}); "
                              "export the run again.") from None
    props = dict(session.get_modelmeta().custom_metadata_map)
    names, pre = parse_metadata(props, str(path))
    inp = session.get_inputs()[0]
    if inp.type == "tensor(uint8)":
        def run(crops: np.ndarray) -> np.ndarray:
            return session.run(None, {inp.name: np.ascontiguousarray(crops)})[0]
    else:
        run = float_runner(lambda x: session.run(None, {inp.name: x})[0], pre)
    return Backend(run, names, pre, "onnx", {"model": str(path), "engine": "ONNX Runtime"})


def tflite_backend(path: Path, threads: int | None = None) -> Backend:
    """An exported .tflite file run by ai-edge-litert (extra `mobiletune[tflite]`); class
    names and preprocessing come from the file's own metadata."""
    from mobiletune.predict import litert as tflite

    tflite.need("Running a .tflite file")
    names, pre = parse_metadata(tflite.read_metadata(path), str(path))
    run = tflite.open_interpreter(path, threads)
    return Backend(run, names, pre, "tflite", {"model": str(path), "engine": "LiteRT"})


def open_backend(arg: str | os.PathLike | None) -> Backend:
    """Any model mobiletune writes: a run directory (its best.pt), a `.pt` checkpoint, a
    TorchScript export, an `.onnx` or a `.tflite` export. None means `runs/latest`."""
    p = Path(arg) if arg is not None else None
    if p is not None and not p.exists():
        raise CheckpointError(f"Model {p} not found. Pass a run directory, a .pt checkpoint, "
                              "or an exported .onnx, .tflite or TorchScript file.")
    if p is not None and p.suffix.lower() == ".mlpackage":
        raise CheckpointError(f"{p} is a Core ML package; Core ML runs only on macOS and iOS. "
                              "Pass the run directory, or a .pt, .onnx or .tflite export.")
    if p is not None and p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".onnx":
            return onnx_backend(p)
        if suffix == ".tflite":
            return tflite_backend(p)
        if is_torchscript(p):
            return torchscript_backend(p)
    from mobiletune.config.schema import finetune_depth
    from mobiletune.model.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(p)
    info = {"checkpoint": ckpt["path"], "arch": ckpt["arch"], "stage": ckpt["stage"],
            "epoch": ckpt["epoch"], "temperature": ckpt.get("temperature")}
    finetune = (ckpt.get("config") or {}).get("finetune") or {}
    return torch_backend(model_from_checkpoint(ckpt), ckpt["class_names"], ckpt["preprocess"],
                         info, unfrozen=int(ckpt.get("unfrozen_blocks") or 0),
                         cached_at=finetune_depth(ckpt["arch"], finetune.get("unfreeze")))

