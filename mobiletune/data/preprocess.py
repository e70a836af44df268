"""The eval view of an image, one definition for every consumer: resize the short side,
center-crop, normalize. As uint8 (`crop_uint8`, what exported app models take), as float
NCHW with numpy (`normalize`, `preprocess_image`) and inside a graph (`Normalized`).
Training's PIL transforms (`transforms.py`) compute the same view with torchvision.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def resize_short(image, resize: int):
    """RGB PIL image with its short side `resize`, as torchvision's Resize(int) makes it."""
    from PIL import Image

    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(resize * long / short)  # torchvision truncates, not rounds
    size = (resize, new_long) if w <= h else (new_long, resize)
    return image.convert("RGB").resize(size, Image.BILINEAR)


def center_box(size: tuple[int, int], crop: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's CenterCrop(crop) in an image of `size`."""
    w, h = size
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    if top < 0 or left < 0:
        raise ValueError(f"image {w}x{h} is smaller than crop {crop}")
    return left, top, left + crop, top + crop


def crop_uint8(image, spec: dict) -> np.ndarray:
    """HWC uint8 center crop of one PIL image, as torchvision's Resize(resize) +
    CenterCrop(crop) compute it: what every exported model and every backend starts from."""
    image = resize_short(image, spec["resize"])
    return np.asarray(image.crop(center_box(image.size, spec["crop"])), dtype=np.uint8)


def normalize(crops: np.ndarray, spec: dict) -> np.ndarray:
    """NCHW float32 for a uint8 NHWC batch: ToTensor + Normalize(mean, std)."""
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    x = (crops.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess_image(image, spec: dict) -> np.ndarray:
    """CHW float32 for one PIL image, equal to the eval transform, with no torch."""
    return normalize(crop_uint8(image, spec)[None], spec)[0]


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
