"""mobiletune: adapt a pretrained MobileNet to your own images.

`mobiletune.load(path).predict(images)` is the Python API (see `mobiletune.predict`); it is
imported on first use, so that `mobiletune --help` never imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load(path=None):
    """A predictor for a run directory, a `.pt` checkpoint, or an exported TorchScript,
    `.onnx` or `.tflite` file (None: `runs/latest`); see `mobiletune.predict.load`."""
    from mobiletune.predict.predictor import load as _load

    return _load(path)


def audit(target, folds: int = 5, curve: bool = True, overrides=None):
    """Audit the labels of a data folder, a labels CSV or a YAML config (as `mobiletune
    audit` does): returns `training.audit.AuditResult` with `.dir`, `.suspects` (best
    first), `.conflicts` and `.curve`. `overrides`: dotted config keys, e.g.
    {"model.arch": "mobilenet_v2", "model.weights": "w.pth"}."""
    from pathlib import Path

    from mobiletune.config.load import load_config
    from mobiletune.training.audit import audit as _audit

    p = Path(target)
    changes = list((overrides or {}).items())
    if p.suffix.lower() in (".yaml", ".yml"):
        return _audit(load_config(p, changes), folds, curve)
    key = "data.labels" if p.suffix.lower() == ".csv" else "data.root"
    return _audit(load_config(None, [(key, str(p.absolute())), *changes]), folds, curve)
