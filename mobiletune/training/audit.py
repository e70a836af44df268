"""`mobiletune audit`: out-of-fold probabilities for every image (training/heads.py), label
suspects by confident learning (evaluation/suspects.py), near-duplicates filed under two
classes (check-data), and optionally a learning curve (training/curve.py), written to a new
folder `<output>/<name>-audit` with suspects.csv and audit.html."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobiletune.config.load import dump_yaml
from mobiletune.config.schema import Config
from mobiletune.data.samples import Sample
from mobiletune.fileio import new_run_dir, write_csv, write_text
from mobiletune.training.heads import load_features, out_of_fold
from mobiletune.training.stage import Callbacks

DEFAULT_FOLDS = 5


@dataclass
class AuditResult:
    """What `audit` wrote and found (`dir` holds suspects.csv, audit.html, audit.json)."""

    dir: Path
    n_images: int
    k: int
    accuracy: float  # out-of-fold, pooled over every image
    suspects: list = field(default_factory=list)  # evaluation.suspects.Suspect, best first
    conflicts: list = field(default_factory=list)  # data.checkdata.Duplicate (label_conflict)
    curve: Any = None  # training.curve.Curve, or None with curve=False
    seconds: dict[str, float] = field(default_factory=dict)


def _label_conflicts(cfg: Config, callbacks: Callbacks) -> list:
    """check-data's near-duplicate pairs filed under two classes (the same picture cannot
    be both), or [] when the check itself cannot run."""
    from mobiletune.data.checkdata import check_data

    try:
        report = check_data(cfg.data.labels or cfg.data.root,
                            progress=lambda d, t: callbacks.on_progress("duplicates", d, t))
    except Exception as e:  # noqa: BLE001 - the audit stands without this section
        callbacks.on_message(f"warning: the duplicate check failed ({e}); audit.html omits it")
        return []
    return [d for d in report.duplicates if d.kind == "label_conflict"]


def audit(cfg: Config, k: int = DEFAULT_FOLDS, curve: bool = True,
          callbacks: Callbacks | None = None, *, seeds: int = 3,
          fractions: tuple[float, ...] | None = None) -> AuditResult:
    """Audit the labels of `cfg`'s data (train and val images together) into a new folder
    `<output>/<name>-audit` (then -audit-2, ...): suspects.csv, audit.html, audit.json,
    and with `curve` learning_curve.png/.csv. Returns what it found."""
    from mobiletune.evaluation.audit_page import write_audit_page
    from mobiletune.evaluation.suspects import (
        SUSPECTS_HEADER,
        counts,
        find_suspects,
        headline,
    )
    from mobiletune.training import curve as lc
    from mobiletune.training.folds import assign_folds, check_folds
    from mobiletune.training.run import scan_config

    callbacks = callbacks or Callbacks()
    t0 = time.perf_counter()
    data = scan_config(cfg, callbacks)
    check_folds(data, k)
    feats, heads = load_features(cfg, data, callbacks)
    t_feat = time.perf_counter()
    samples = [Sample(p, int(y), "train") for p, y in zip(feats.paths, feats.labels)]
    folds = np.array(assign_folds(samples, k, cfg.seed))
    probs = out_of_fold(heads, feats, folds, k, cfg.seed, callbacks)
    suspects = find_suspects(probs, feats.labels, feats.paths, feats.classes)
    accuracy = float((probs.argmax(1) == feats.labels).mean())
    t_heads = time.perf_counter()
    conflicts = _label_conflicts(cfg, callbacks)
    t_dup = time.perf_counter()
    found = lc.learning_curve(heads, feats, folds, k, cfg.seed, seeds=seeds,
                              fractions=fractions or lc.FRACTIONS, callbacks=callbacks,
                              full=(0, probs)) if curve else None
    t_curve = time.perf_counter()

    out = new_run_dir(cfg.output, f"{cfg.name}-audit")
    write_text(out / "config.yaml", dump_yaml(cfg))
    write_csv(out / "suspects.csv", SUSPECTS_HEADER, [s.row() for s in suspects])
    write_csv(out / "probabilities.csv", ["path", "given", *feats.classes],
              [[p, feats.classes[y], *(f"{v:.4f}" for v in row)]
               for p, y, row in zip(feats.paths, feats.labels, probs)])
    if found is not None:
        lc.write_curve(found, out)
    seconds = {"features": t_feat - t0, "heads": t_heads - t_feat,
               "duplicates": t_dup - t_heads, "curve": t_curve - t_dup}
    result = AuditResult(out, len(feats.labels), k, accuracy, suspects, conflicts, found,
                         seconds)
    summary = {"k": k, "n_images": result.n_images, "accuracy_oof": accuracy,
               "suspects": counts(suspects), "headline": headline(suspects, result.n_images),
               "label_conflicts": len(conflicts), "seconds": seconds,
               "curve": found.summary() if found is not None else None}
    write_text(out / "audit.json", json.dumps(summary, indent=2) + "\n")
    write_audit_page(out / "audit.html", result, info={
        "data": cfg.data.labels or cfg.data.root, "arch": cfg.model.arch,
        "weights": cfg.model.weights, "folds": k, "images": result.n_images},
        progress=lambda d, t: callbacks.on_progress("page", d, t))
    result.seconds["total"] = time.perf_counter() - t0
    return result
