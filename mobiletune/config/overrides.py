"""Which overrides a command can act on. One it would only record in config.yaml, without
acting on it, is refused by name (exit 2): config.yaml always says what ran."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobiletune.config.load import config_from_dict
from mobiletune.config.schema import Config
from mobiletune.errors import ConfigError

# what may change when a run resumes: where it runs, not what it computes
RESUME_KEYS = ("device", "data.workers")


def _refuse(command: str, keys: list[str], why: str) -> None:
    if keys:
        raise ConfigError(f"{command} cannot apply {', '.join(keys)}: {why}", key=keys[0],
                          value=keys)


def refuse_unhonoured_resume(changes: dict[str, Any], run_dir: str | Path) -> None:
    """`train --resume` continues a run as configured: only RESUME_KEYS may change."""
    _refuse("--resume", [k for k in changes if k not in RESUME_KEYS],
            "a resumed run continues exactly as configured (only device and data.workers "
            "may change). To train on with other settings, start a new run from it: "
            f"`mobiletune finetune --from {run_dir} ...`.")


def refuse_unhonoured_finetune(cfg: Config, parent: dict, changes: dict[str, Any],
                               same_data: bool) -> None:
    """`finetune` takes its model (weights included) from the parent checkpoint and, on the
    same data, the parent's split; it runs no head stage. Overrides of those are refused."""
    old = config_from_dict(parent["config"])
    bad = [k for k in ("train.epochs", "train.lr", "parent") if k in changes]
    if "model.weights" in changes and cfg.model.weights != old.model.weights:
        bad.append("model.weights")
    if same_data and "data.val_split" in changes and cfg.data.val_split != old.data.val_split:
        bad.append("data.val_split")
    _refuse("finetune", bad,
            f"the model (weights included) comes from {parent['path']}, the train/val split "
            "from its splits.csv (unless --data names other images), and no head stage runs. "
            "Drop them, or train a new run with `mobiletune train`.")
