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
