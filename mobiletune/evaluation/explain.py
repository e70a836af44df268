"""Grad-CAM (Selvaraju et al., 2017): where in the image the model found evidence for a class.

The map is the last block of `model.features` (the 7x7 grid at 224 px), each channel weighted
by the mean gradient of the class's logit with respect to it, ReLU'd and scaled to [0, 1].
Plain torch: one forward hook and one `torch.autograd.grad`, no extra dependency. The model
sees the center crop that `predict` uses, so the map covers that crop; the overlay shows it
on the whole (resized) image with the parts the model never saw dimmed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from mobiletune.data.images import load_image
from mobiletune.data.preprocess import center_box, normalize, resize_short
from mobiletune.errors import CheckpointError, ConfigError


def grad_cam(model: nn.Module, x: torch.Tensor, targets: Sequence[int] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(maps [N, h, w] in [0, 1], probabilities [N, C]) for a normalized NCHW batch; each map
    explains `targets[i]`, or the predicted class when `targets` is None."""
    acts: list[torch.Tensor] = []
    hook = model.features[-1].register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        with torch.enable_grad():
            # the input carries the graph: a frozen model's parameters need no gradients
            logits = model(x.detach().clone().requires_grad_(True))
            idx = logits.argmax(1) if targets is None else torch.as_tensor(list(targets))
            score = logits.gather(1, idx.view(-1, 1).to(logits.device)).sum()
            (grad,) = torch.autograd.grad(score, acts[0])
    finally:
        hook.remove()
    cam = torch.relu((grad.mean((2, 3), keepdim=True) * acts[0]).sum(1)).detach()
    top = cam.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
    probs = torch.softmax(logits.detach().float(), 1)
    return (cam / top).clamp(0, 1).cpu().numpy(), probs.cpu().numpy()


def overlay(image: Image.Image, box: tuple[int, int, int, int], cam: np.ndarray,
            alpha: float = 0.5) -> Image.Image:
    """`image` with `cam` as a heat map over `box` (the crop the model saw); the rest dimmed."""
    from matplotlib import colormaps

    left, top, right, bottom = box
    heat = Image.fromarray(np.uint8(np.round(cam * 255))).resize((right - left, bottom - top),
                                                                 Image.BILINEAR)
    rgb = np.uint8(colormaps["jet"](np.asarray(heat) / 255.0)[..., :3] * 255)
    out = Image.blend(image, Image.new("RGB", image.size), 0.6)
    out.paste(Image.blend(image.crop(box), Image.fromarray(rgb), alpha), (left, top))
    return out


@dataclass
class Explanation:
    """The prediction (`label`, `score`) for one image, the class explained, and its map
    (`cam`, over the center crop, in [0, 1]); or the `error` that stopped it."""

    path: str | None
    label: str | None = None
    score: float | None = None
    explained: str | None = None
    cam: np.ndarray | None = None
    image: Image.Image | None = field(default=None, repr=False)  # resized, whole
    box: tuple[int, int, int, int] | None = None  # the crop within `image`
    error: str | None = None

    def overlay(self) -> Image.Image:
        """The heat map over the image, same aspect as the input."""
        return overlay(self.image, self.box, self.cam)

    def to_json(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "label": self.label, "score": round(self.score, 6),
                "class": self.explained, "cam": np.round(self.cam, 4).tolist()}


class Explainer:
    """A PyTorch model with its class names and preprocessing, ready to explain images."""

    def __init__(self, model: nn.Module, class_names: Sequence[str], pre: dict) -> None:
        self.model, self.class_names, self.pre = model.eval(), list(class_names), pre

    @classmethod
    def from_checkpoint(cls, arg: str | os.PathLike | None) -> "Explainer":
        """From a run directory or a `.pt` checkpoint (gradients need the PyTorch model)."""
        from mobiletune.model.checkpoint import load_checkpoint, model_from_checkpoint

        if arg is not None and str(arg).lower().endswith((".onnx", ".tflite")):
            raise CheckpointError(f"explain needs the PyTorch checkpoint, not the export {arg}; "
                                  "pass its run directory or best.pt.")
        ckpt = load_checkpoint(arg)
        return cls(model_from_checkpoint(ckpt), ckpt["class_names"], ckpt["preprocess"])

    def target(self, name: str | None) -> int | None:
        """The class index for `--class NAME` (None: each image's predicted class)."""
        if name is None:
            return None
        if name not in self.class_names:
            raise ConfigError(f"--class {name!r} is not one of the model's classes "
                              f"({', '.join(self.class_names)}).", key="--class", value=name,
                              choices=tuple(self.class_names))
        return self.class_names.index(name)

    def explain_one(self, item, target: int | None = None) -> Explanation:
        """Explain one path or PIL image; an unreadable input gives an Explanation with `error`."""
        from mobiletune.predict.predictor import input_error

        path = str(item) if isinstance(item, (str, os.PathLike)) else None
        try:
            image = load_image(item, self.pre["resize"]) if path else item
            image = resize_short(image, self.pre["resize"])
        except Exception as e:
            return Explanation(path, error=input_error(e))
        box = center_box(image.size, self.pre["crop"])
        x = torch.from_numpy(normalize(np.asarray(image.crop(box))[None], self.pre))
        cams, probs = grad_cam(self.model, x, None if target is None else [target])
        pred = int(probs[0].argmax())
        return Explanation(path, self.class_names[pred], float(probs[0, pred]),
                           self.class_names[pred if target is None else target], cams[0],
                           image, box)

    def explain(self, items: Sequence, class_name: str | None = None,
                on_item: Callable[[Explanation], None] | None = None) -> list[Explanation]:
        """One Explanation per input, in order."""
        target, out = self.target(class_name), []
        for item in items:
            out.append(self.explain_one(item, target))
            if on_item:
                on_item(out[-1])
        return out


def overlay_fn(predictor) -> Callable[[str], Image.Image | None] | None:
    """path -> Grad-CAM overlay of the predicted class (None when unreadable), for a
    predictor over a PyTorch checkpoint; None for exports (no gradients there)."""
    if predictor.backend.module is None:
        return None
    explainer = Explainer(predictor.backend.module, predictor.class_names, predictor.preprocess)

    def run(path: str) -> Image.Image | None:
        r = explainer.explain_one(path)
        return None if r.error else r.overlay()

    return run
