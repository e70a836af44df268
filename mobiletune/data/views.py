"""The pixels the cache stores for an image, decoded wherever a fill runs: on a thread beside
the engine (frozen/fill.py) or in a worker process (frozen/decoders.py). Everything here is
plain data in and out, so it pickles to a process: the policy (preprocessing spec, augment,
views) and per job (path, kind, content key)."""

from __future__ import annotations

import numpy as np

from mobiletune.data.images import load_image
from mobiletune.data.transforms import decode_side, pixel_views
from mobiletune.errors import DataError

# (preprocessing spec, augment, views): what FeatureCache keys its entries by
Policy = tuple[dict, str, int]
# (path, "train" | "eval", content key: seeds a train job's random views, "" when unused)
KeyedJob = tuple[str, str, str]


def decode_job(policy: Policy, job: KeyedJob) -> list[np.ndarray]:
    """The uint8 HWC views of one job (transforms.pixel_views)."""
    pre, augment, views = policy
    path, kind, key = job
    try:
        img = load_image(path, decode_side(pre))
    except Exception as e:  # noqa: BLE001 - PIL raises assorted errors on a changed file
        raise DataError(f"{path} could not be decoded while caching ({e}); it changed since "
                        "the scan: remove or replace it.") from None
    return pixel_views(img, pre, augment, kind, views, key)


def decode_chunk(policy: Policy, jobs: list[KeyedJob]) -> tuple[list[int], np.ndarray]:
    """(views per job, all their views stacked as one uint8 NHWC array)."""
    views = [decode_job(policy, job) for job in jobs]
    return [len(v) for v in views], np.stack([v for vs in views for v in vs])
