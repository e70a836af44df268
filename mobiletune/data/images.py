"""Images: the extensions mobiletune reads, decoding any of them into upright 8-bit RGB,
and probing whether a file decodes (the scan's test for every file).

`load_image` and `_to_rgb` are part of the feature cache's key (frozen/cache.code_version):
a change to how a file becomes pixels is a new cache.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps

# `probe` skips every file over PIL's pixel limit by its size, before any decode, so PIL's
# warning for such a file (raised as it opens it) says nothing the skip reason does not.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_WHITE = (255, 255, 255)


def load_image(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Decode any image PIL reads into upright RGB.

    `min_side` lets JPEGs decode at a reduced scale (PIL draft: the DCT does the resizing),
    never below what the target needs. EXIF orientation is applied; 16-bit, CMYK, palette
    and alpha images become plain 8-bit RGB (alpha over white).
    """
    with Image.open(path) as img:
        if min_side and img.format == "JPEG":
            w, h = img.size
            scale = min(w, h) / min_side
            if scale >= 2:
                img.draft("RGB", (int(w / scale) + 1, int(h / scale) + 1))
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np  # 16-bit and float greyscale: scale to the 8-bit range

        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray((arr.clip(0, top) * (255.0 / top)).astype("uint8"), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, _WHITE)
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB") if img.mode != "RGB" else img.copy()


def probe(path: Path) -> str | None:
    """Why `path` cannot be used as an image, or None when it decodes fully."""
    if path.name.startswith("."):
        return "hidden file"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image extension ({path.suffix or 'none'})"
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            # The limit is checked here, not by turning PIL's warning into an error: the
            # scan probes in threads, and warnings.catch_warnings is process-wide state that
            # one thread's exit restores under another (seen on a 16-core machine).
            if Image.MAX_IMAGE_PIXELS and img.width * img.height > Image.MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{img.width * img.height} pixels")
            img.draft("RGB", (32, 32))  # a full but cheap decode: JPEG at 1/8 scale
            img.load()
            # the rest of load_image: a file that passes here also loads in training
            _to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError:
        return f"larger than PIL's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels)"
    except OSError as e:
        return f"unreadable: {str(e).splitlines()[0][:120] or type(e).__name__}"
    except Exception as e:  # PIL raises assorted errors on hostile files
        return f"unreadable: {type(e).__name__}: {str(e)[:120]}"
    return None
