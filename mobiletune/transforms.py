"""Views of an image: the eval view from the weights' own preprocessing, and augmented views.

`train_transform` draws from torch's global RNG (live training: reseeded every epoch);
`augmented_view` draws the same distribution from an explicit `random.Random`, which is
thread-safe and lets the cache make the same K views of an image in any run.
"""

from __future__ import annotations

import math
import random

from PIL import Image

# random-resized-crop area range per augmentation level ("standard" is torchvision's default)
_SCALES = {"light": (0.35, 1.0), "standard": (0.08, 1.0)}


def eval_transform(pre: dict):
    """PIL image -> normalized tensor, exactly the weights' eval preprocessing."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(pre["resize"]), T.CenterCrop(pre["crop"]), T.ToTensor(),
                      T.Normalize(pre["mean"], pre["std"])])


def train_transform(pre: dict, augment: str):
    """Training augmentation: none (eval view), light, or standard (the tutorial recipe)."""
    from torchvision import transforms as T

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


def augmented_view(img: Image.Image, pre: dict, augment: str, rng: random.Random):
    """One training view drawn from `rng` alone (thread-safe, reproducible): the same
    distribution as `train_transform`, without touching torch's global RNG."""
    from torchvision.transforms import functional as TF

    if augment == "none":
        return eval_transform(pre)(img)
    top, left, ch, cw = _crop_box(img.width, img.height, _SCALES[augment], rng)
    view = TF.resized_crop(img, top, left, ch, cw, [pre["crop"], pre["crop"]], antialias=True)
    if rng.random() < 0.5:
        view = TF.hflip(view)
    return TF.normalize(TF.to_tensor(view), pre["mean"], pre["std"])


def decode_side(pre: dict) -> int:
    """Smallest side JPEGs must keep when decoded at reduced scale: random crops may
    take a quarter of the area, so keep twice the crop (and at least the resize)."""
    return max(pre["resize"], 2 * pre["crop"])
