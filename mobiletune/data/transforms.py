"""Views of an image: the eval view from the weights' own preprocessing, and augmented views.

`train_transform` draws from torch's global RNG (live training: reseeded every epoch);
`pixel_views` draws the same distribution from an explicit `random.Random`, which is
thread-safe and lets the cache make the same K views of an image in any run; it returns
uint8 pixels, and the cache's engine normalizes them (frozen/engine.Normalized).
"""

from __future__ import annotations

import math
import random

from PIL import Image

# random-resized-crop area range per augmentation level ("standard" is torchvision's default)
_SCALES = {"light": (0.35, 1.0), "standard": (0.08, 1.0)}


def eval_transform(pre: dict):
    """PIL image -> normalized tensor, exactly the weights' eval preprocessing."""
    from mobiletune.vision import transforms as T

    return T.Compose([T.Resize(pre["resize"]), T.CenterCrop(pre["crop"]), T.ToTensor(),
                      T.Normalize(pre["mean"], pre["std"])])


def train_transform(pre: dict, augment: str):
    """Training augmentation: none (eval view), light, or standard (the tutorial recipe)."""
    from mobiletune.vision import transforms as T

    if augment == "none":
        return eval_transform(pre)
    steps = [T.RandomResizedCrop(pre["crop"], scale=_SCALES[augment]), T.RandomHorizontalFlip()]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(pre["mean"], pre["std"])])


def _crop_box(w: int, h: int, scale: tuple[float, float], rng: random.Random) -> tuple[int, int, int, int]:
    """A random-resized-crop box (top, left, height, width): area fraction in `scale`,
    aspect ratio log-uniform in [3/4, 4/3]; the whole image when ten tries miss."""
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    side = min(w, h)
    return (h - side) // 2, (w - side) // 2, side, side


def _augmented_image(img: Image.Image, pre: dict, augment: str, rng: random.Random) -> Image.Image:
    """One training view drawn from `rng` alone (thread-safe, reproducible): the same
    distribution as `train_transform`, without touching torch's global RNG."""
    from mobiletune.vision import functional as TF

    top, left, ch, cw = _crop_box(img.width, img.height, _SCALES[augment], rng)
    view = TF.resized_crop(img, top, left, ch, cw, [pre["crop"], pre["crop"]], antialias=True)
    return TF.hflip(view) if rng.random() < 0.5 else view


def eval_pixels(img: Image.Image, pre: dict):
    """The eval view as uint8 HWC pixels: `eval_transform` before ToTensor and Normalize."""
    import numpy as np
    from mobiletune.vision import functional as TF

    return np.asarray(TF.center_crop(TF.resize(img, pre["resize"]), pre["crop"]))


def augmented_pixels(img: Image.Image, pre: dict, augment: str, rng: random.Random):
    """A training view as uint8 HWC pixels (`train_transform` before ToTensor and Normalize)."""
    import numpy as np

    if augment == "none":
        return eval_pixels(img, pre)
    return np.asarray(_augmented_image(img, pre, augment, rng))


def pixel_views(img: Image.Image, pre: dict, augment: str, kind: str, views: int, key: str) -> list:
    """What the cache stores for one image, as uint8 HWC pixels: its eval view (kind
    "eval"), or `views` training views, view v drawn from random.Random(f"{key}:{v}") so the
    same image always yields the same views whatever the run's seed, order or thread."""
    if kind == "eval" or augment == "none":
        return [eval_pixels(img, pre)] * (1 if kind == "eval" else views)
    return [augmented_pixels(img, pre, augment, random.Random(f"{key}:{v}")) for v in range(views)]


def decode_side(pre: dict) -> int:
    """Smallest side JPEGs must keep when decoded at reduced scale: random crops may
    take a quarter of the area, so keep twice the crop (and at least the resize)."""
    return max(pre["resize"], 2 * pre["crop"])
