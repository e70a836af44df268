"""`train --folds K`: K runs on K stratified folds of all the images, one accuracy estimate.

Every image (train/ and val/ folders alike, or the flat class folders) lands in exactly one
fold; fold i's run trains on the other K-1 folds and is scored live on fold i. Each image is
therefore scored once, by a model that never saw it, and the pooled count gives an interval
over all N images instead of one val split's. The feature cache makes folds 2..K cheap: their
images were already passed through the frozen backbone by fold 1 (as a val or train view).
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

from mobiletune.config.load import dump_yaml
from mobiletune.config.schema import Config
from mobiletune.data.samples import Sample, ScanResult
from mobiletune.errors import ConfigError
from mobiletune.evaluation.metrics import wilson_interval
from mobiletune.fileio import new_run_dir, write_csv, write_text

FOLDS_HEADER = ["fold", "n_train", "n_val", "accuracy", "val_loss"]


def assign_folds(samples: list[Sample], k: int, seed: int) -> list[int]:
    """A fold per sample: each class shuffled (seeded) and dealt round-robin, each class
    starting where the previous one stopped, so fold sizes differ by at most one."""
    by_class: dict[int, list[int]] = {}
    for i in sorted(range(len(samples)), key=lambda j: samples[j].path):
        by_class.setdefault(samples[i].label, []).append(i)
    rng = random.Random(seed)
    fold, start = [0] * len(samples), 0
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        for n, i in enumerate(members):
            fold[i] = (start + n) % k
        start = (start + len(members)) % k
    return fold


def check_folds(data: ScanResult, k: int) -> None:
    """K >= 2, at least 2 images per class (so training sees every class), K <= N."""
    counts = {c: 0 for c in range(len(data.classes))}
    for s in data.samples:
        counts[s.label] += 1
    small = min(counts, key=counts.get)
    if k < 2 or counts[small] < 2:
        raise ConfigError(f"--folds {k}: k-fold needs k >= 2 and at least 2 images per class "
                          f"(class {data.classes[small]} has {counts[small]}).", key="folds",
                          value=k, choices=(2, max(2, counts[small])))
    if k > len(data.samples):
        raise ConfigError(f"--folds {k} is more than the {len(data.samples)} images.",
                          key="folds", value=k, choices=(2, len(data.samples)))


def fold_data(data: ScanResult, folds: list[int], i: int) -> ScanResult:
    samples = [Sample(s.path, s.label, "val" if f == i else "train")
               for s, f in zip(data.samples, folds)]
    return ScanResult(list(data.classes), samples, list(data.skipped), list(data.warnings))


def train_folds(cfg: Config, k: int, callbacks=None) -> Path:
    """Train K fold runs under one new run directory; write folds.csv and folds.json."""
    from mobiletune.model.checkpoint import load_checkpoint
    from mobiletune.training import run as pipeline

    data = pipeline.scan_config(cfg)
    check_folds(data, k)
    folds = assign_folds(data.samples, k, cfg.seed)
    root = new_run_dir(cfg.output, cfg.name)
    write_text(root / "config.yaml", dump_yaml(cfg))
    rows, correct, total = [], 0, 0
    for i in range(k):
        if callbacks:
            callbacks.on_message(f"fold {i + 1} of {k}")
        sub = dataclasses.replace(cfg, output=str(root), name=f"fold-{i + 1}")
        part = fold_data(data, folds, i)
        run = pipeline.train(sub, callbacks, data=part)
        m = load_checkpoint(run)["metrics"]
        n_val = m.get("n_val", len(part.of("val")))
        rows.append([i + 1, len(part.of("train")), n_val, f"{m['val_acc']:.6f}",
                     f"{m['val_loss']:.6f}"])
        correct += round(m["val_acc"] * n_val)
        total += n_val
    write_csv(root / "folds.csv", FOLDS_HEADER, rows)
    summary: dict[str, Any] = {
        "k": k, "accuracy_mean": sum(float(r[3]) for r in rows) / k,
        "accuracy_ci95": list(wilson_interval(correct, total)), "n_images": total,
        "accuracy_pooled": correct / max(total, 1)}
    write_text(root / "folds.json", json.dumps(summary, indent=2) + "\n")
    (root / "latest").unlink(missing_ok=True)  # the fold runs' own `latest` link
    return root
