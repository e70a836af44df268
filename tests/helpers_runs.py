"""A run directory with a model whose outputs vary across images, for tests that compare
predictions (a random-init MobileNet gives every image the head's bias: such tests pass
whatever the code computes)."""

from __future__ import annotations

from pathlib import Path

import torch

from mobiletune.config.schema import Config
from mobiletune.data.scan import scan
from mobiletune.fileio import write_csv
from mobiletune.model.backbone import build_model, preprocess_spec
from mobiletune.model.checkpoint import save_checkpoint
from tests.conftest import make_folder


def live_model(arch: str = "mobilenet_v3_small", classes: int = 2, seed: int = 0,
               small_head: bool = True):
    """A random model whose activations do not vanish (BatchNorm variance 0.1, not 1)."""
    torch.manual_seed(seed)
    model = build_model(arch, "none", classes).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(0.1)
    if small_head:  # features are large now: a small head keeps probabilities off 0/1
        with torch.no_grad():
            model.classifier[-1].weight.mul_(0.01)
    return model


def live_weights(path: Path, arch: str = "mobilenet_v3_small") -> Path:
    """A backbone weights file (torchvision's 1000-class state_dict) for `model.weights`,
    whose features vary across images, so that training on it is not degenerate."""
    torch.save(live_model(arch, 1000, small_head=False).state_dict(), path)
    return path


def make_live_run(root: Path, classes: tuple[str, ...] = ("ants", "bees"), size: int = 64,
                  per_class: int = 6, arch: str = "mobilenet_v3_small") -> Path:
    """`root/run` as `train` leaves it (best.pt, splits.csv) over `root/data` (split layout)."""
    data = make_folder(root / "data", classes, per_class=per_class, layout="split", size=size)
    found = scan(data)
    cfg = Config().to_dict()
    cfg["data"]["root"] = str(data)
    ckpt = {"format_version": 1, "arch": arch, "class_names": found.classes, "stage": "head",
            "unfrozen_blocks": 0, "epoch": 1, "metrics": {},
            "preprocess": preprocess_spec(arch, "none", size), "config": cfg,
            "model": live_model(arch, len(found.classes)).state_dict()}
    run = root / "run"
    save_checkpoint(run / "best.pt", ckpt)
    write_csv(run / "splits.csv", ["path", "label", "split"],
              [(s.path, found.classes[s.label], s.split) for s in found.samples])
    return run
