"""What a data folder becomes: samples (path, class index, split), the scan's result, and
the stratified train/val split. Plain records, shared by folder scans and labels CSVs."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    """One usable image: absolute path, class index, and `train` or `val`."""

    path: str
    label: int
    split: str


@dataclass
class ScanResult:
    """What a data folder holds: class names, usable samples, skipped files, warnings."""

    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def of(self, split: str) -> list[Sample]:
        return [s for s in self.samples if s.split == split]


def split_paths(paths: list[str], fraction: float, rng: random.Random
                ) -> tuple[list[str], list[str]]:
    """(train, val) of one class's paths: `fraction` of them to val (at least 1 when there
    are 2 or more), order drawn from `rng`."""
    shuffled = sorted(paths)
    rng.shuffle(shuffled)
    n_val = round(len(shuffled) * fraction) if len(shuffled) > 1 else 0
    n_val = min(max(n_val, 1 if len(shuffled) > 1 else 0), len(shuffled) - 1)
    return shuffled[n_val:], shuffled[:n_val]
