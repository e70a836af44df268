"""Checkpoints: self-describing plain dicts, always loaded with `weights_only=True`.

A checkpoint carries everything needed to use it: arch, class names (index i is logit i),
preprocessing, the config, and the plain module's state_dict. `last.pt` adds what resuming
needs (optimizer, scheduler, RNG states, history).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobiletune.config.schema import ARCHS
from mobiletune.errors import CheckpointError
from mobiletune.fileio import atomic_write, find_run

FORMAT_VERSION = 1
REQUIRED = ("format_version", "arch", "class_names", "stage", "unfrozen_blocks", "epoch",
            "metrics", "preprocess", "config", "model")
_TYPES = {"format_version": int, "arch": str, "class_names": list, "stage": str,
          "unfrozen_blocks": int, "epoch": int, "metrics": dict, "preprocess": dict,
          "config": dict, "model": dict}


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> Path:
    """Write `ckpt` whole or not at all (an interrupt never leaves half a file)."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))


def resolve_checkpoint(arg: str | os.PathLike | None, name: str = "best.pt") -> Path:
    """A checkpoint file from a file path, a run directory, or None (`runs/latest`)."""
    p = Path(arg) if arg is not None else None
    if p is not None and p.is_file():
        return p
    if p is not None and not p.exists():
        raise CheckpointError(f"Checkpoint {p} not found. Pass a run directory or a .pt file "
                              "(for example runs/latest or runs/cats/best.pt).")
    run = find_run(p)
    ckpt = run / name
    if not ckpt.is_file():
        raise CheckpointError(f"{run} holds no {name}; it may still be training or was "
                              f"interrupted (resume it with `mobiletune train --resume {run}`).")
    return ckpt


def load_checkpoint(arg: str | os.PathLike | None, name: str = "best.pt") -> dict[str, Any]:
    """Load and check a checkpoint. Never unpickles code: `weights_only=True` always."""
    path = resolve_checkpoint(arg, name)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, hostile pickle, not a torch file at all
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"Checkpoint {path} could not be loaded safely ({type(e).__name__}: "
                              f"{first}). It may be truncated, from another tool, or unsafe; "
                              "nothing in it was executed.") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
        raise CheckpointError(f"{path} is not a mobiletune checkpoint (missing {', '.join(missing)}).")
    bad = [k for k, t in _TYPES.items() if not isinstance(ckpt[k], t)]
    if ckpt.get("arch") not in ARCHS or not all(isinstance(c, str) for c in ckpt["class_names"]):
        bad.append("arch" if ckpt.get("arch") not in ARCHS else "class_names")
    if bad:  # checked here, so later code never trips over a damaged or foreign dict
        raise CheckpointError(f"{path} is damaged or not a mobiletune checkpoint "
                              f"(bad {', '.join(dict.fromkeys(bad))}); retrain or pick another.")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {ckpt['format_version']}; this "
                              f"mobiletune reads up to {FORMAT_VERSION}. Upgrade mobiletune.")
    ckpt["path"] = str(path)
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the plain torchvision model of a checkpoint, in eval mode."""
    from mobiletune.model.backbone import build_model

    section = ckpt["config"].get("model")
    dropout = section.get("dropout", 0.2) if isinstance(section, dict) else 0.2
    dropout = float(dropout) if isinstance(dropout, (int, float)) else 0.2  # eval ignores it
    model = build_model(ckpt["arch"], "none", len(ckpt["class_names"]), dropout)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"Checkpoint {ckpt.get('path')} does not fit {ckpt['arch']} with "
                              f"{len(ckpt['class_names'])} classes: {str(e)[:300]}") from None
    return model.eval()
