"""int8 models: static quantization of an ONNX export (QDQ, per-channel weights, ranges from
training images), keeping the last blocks float when int8 alone costs too much accuracy; the
`.int8` file name; and keeping or refusing an int8 model by `--max-drop` against the float
export, written under a temporary name so a refused or interrupted export leaves nothing."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mobiletune.deploy.parity import Outputs
from mobiletune.errors import MobiletuneError
from mobiletune.fileio import atomic_write
from mobiletune.onnxrt import make_session


class _Reader:
    """The CalibrationDataReader protocol over preprocessed batches of training images."""

    def __init__(self, batches: list[np.ndarray], input_name: str) -> None:
        self._it = iter([{input_name: b} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._it, None)


def _float_tail(names: list[str], n_blocks: int, k: int) -> list[str]:
    """Graph nodes outside `features[:n_blocks - k]`: the last k blocks, pooling and head.

    The exporter names nodes after module paths (`/features/features.17/...`); quantization
    error accumulates towards the output, so the tail is where float helps most for the
    fewest multiply-adds (the last MobileNet blocks run at 7x7).
    """
    if k == 0:
        return []
    keep = []
    for name in names:
        m = re.match(r"/features/features\.(\d+)/", name)
        if m is None or int(m.group(1)) >= n_blocks - k:
            keep.append(name)
    return keep


def _accuracy(model: str | Path, batches: list[np.ndarray], labels: np.ndarray) -> float:
    session = make_session(model)
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: b})[0] for b in batches])
    return float((logits.argmax(1) == labels).mean())


@dataclass
class Int8Result:
    """The int8 model written, how much of it stayed float, and its calibration accuracy."""

    path: Path
    float_blocks: int  # trailing blocks of `features` (and the head) kept float; 0 = all int8
    calib_accuracy: tuple[float, float]  # (float, int8) on the calibration images


def quantize_int8(float_path: str | Path, out_path: str | Path, batches: list[np.ndarray],
                  labels: np.ndarray, meta: dict[str, str], *, n_blocks: int, budget: float,
                  max_float_blocks: int = 6,
                  progress: Callable[[str], None] = lambda _msg: None) -> Int8Result:
    """Static int8 (QDQ, per-channel weights, MinMax ranges from `batches`), metadata kept.

    When the int8 model's accuracy on the calibration images falls more than `budget` below
    the float model's, the last 1, 2, ... `max_float_blocks` blocks and the head stay float
    (mixed precision), and the first that meets the budget is written (else the last tried).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        prepped, quant = Path(tmp) / "prep.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(float_path), str(prepped), skip_symbolic_shape=True)
        graph = onnx.load(str(prepped)).graph
        names, input_name = [n.name for n in graph.node], graph.input[0].name
        ref, last = _accuracy(prepped, batches, labels), min(max_float_blocks, n_blocks)
        for k in range(0, last + 1):
            # ranges are calibrated once and cached: later tries only re-quantize
            quantize_static(str(prepped), str(quant), _Reader(batches, input_name),
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            nodes_to_exclude=_float_tail(names, n_blocks, k),
                            calibration_cache_path=str(Path(tmp) / "ranges.json"))
            acc = _accuracy(quant, batches, labels)
            if ref - acc <= budget:
                break
            done = f"the last {k} block(s) float" if k else "all int8"
            then = f"; next: the last {k + 1} block(s) and the head float" if k < last else ""
            progress(f"int8 ({done}) scores {acc:.3f} on the calibration images against "
                     f"float {ref:.3f}{then}")
        proto = onnx.load(str(quant))
        onnx.helper.set_model_props(proto, {**meta, "int8_float_blocks": str(k)})
        data = proto.SerializeToString()
    return Int8Result(atomic_write(out_path, lambda f: f.write(data)), k, (ref, acc))


def int8_path_for(path: Path) -> Path:
    """Where the int8 model goes: beside the float one, `model.onnx` -> `model.int8.onnx`."""
    return path.with_name(f"{path.stem}.int8{path.suffix or '.onnx'}")


@contextlib.contextmanager
def int8_partial(final: Path | None) -> Iterator[Path | None]:
    """The temporary name an int8 model is written to before `keep_int8` renames it to
    `final`; removed on the way out, so a refused or interrupted export leaves no half-made
    file. None when no int8 model is asked for."""
    tmp = final.with_name(f".{final.name}.partial") if final else None
    try:
        yield tmp
    finally:
        if tmp:
            tmp.unlink(missing_ok=True)


def keep_int8(out: Outputs, fmt: str, max_drop: float, path: Path, tmp: Path,
              final: Path) -> None:
    """Rename the int8 model at `tmp` to `final`, or refuse it (exit 2) when its val accuracy
    drops more than `max_drop` below the float export's."""
    check_int8(out, fmt, max_drop, path, final)
    os.replace(tmp, final)


def check_int8(out: Outputs, fmt: str, max_drop: float, path: Path, final: Path) -> None:
    drop = out.accuracy(fmt) - out.accuracy("int8")
    if drop > max_drop:
        stale = f" The {final.name} there is from an earlier export." if final.exists() else ""
        raise MobiletuneError(
            f"int8 accuracy {out.accuracy('int8'):.4f} is {drop:.4f} below the float model's "
            f"{out.accuracy(fmt):.4f} on {len(out.labels)} validation images, more than "
            f"--max-drop {max_drop}; the int8 model was not kept.{stale} The float export "
            f"{path} is fine: ship it, or allow a larger drop with --max-drop.")
