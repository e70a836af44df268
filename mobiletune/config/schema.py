"""The configuration schema: every key, declared once, with its default, range and help.

Plain declarations only (no YAML, no torch), so the CLI's `--help` stays instant.
Loading and validation live in config.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

ARCHS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
DEVICES = ("auto", "cpu", "cuda", "mps")
EXPORT_FORMATS = ("onnx", "torchscript", "tflite", "coreml")  # deploy.formats.FILE_NAMES
# len(model.features) per arch: the range of `finetune.unfreeze`.
NUM_BLOCKS = {"mobilenet_v2": 19, "mobilenet_v3_small": 13, "mobilenet_v3_large": 17}
# the blocks `mobiletune finetune` unfreezes when not told (training/run.py)
FINETUNE_DEFAULT = 3


def finetune_depth(arch: str, unfreeze: int | None) -> int:
    """The blocks a later finetune of this config unfreezes (`finetune.unfreeze`, else the
    default): where a head stage caches its frozen part (frozen/feeds.py), so the cache holds
    the export of the blocks before that boundary."""
    return min(unfreeze or FINETUNE_DEFAULT, NUM_BLOCKS[arch])


def _key(default: Any, help: str, *, choices: tuple | None = None, lo: float | None = None,
         hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
         kind: type | None = None, auto: bool = False) -> Any:
    # auto: the key may be unset (None, or `auto` in YAML / --set): the run decides
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open,
            "hi_open": hi_open, "kind": kind, "auto": auto}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _key("mobilenet_v3_large", "backbone architecture", choices=ARCHS)
    weights: str = _key("imagenet", "imagenet | none | path/to/state_dict.pth")
    dropout: float = _key(0.2, "dropout before the new head", lo=0.0, hi=1.0, hi_open=True)


@dataclass(frozen=True)
class DataConfig:
    root: str = _key("data", "root/train/<class>/* + root/val/<class>/*, or root/<class>/*")
    labels: str = _key("", "CSV of path,label[,split] (paths relative to it), used instead of "
                       "class folders under root; empty: class folders", kind=str)
    val_split: float = _key(0.2, "val fraction when root has no train/val folders",
                            lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    image_size: int = _key(224, "crop size fed to the network", lo=32, hi=1024)
    batch_size: int = _key(32, "images per optimizer step", lo=1, hi=4096)
    workers: str = _key("auto", "decode processes: auto or a number", kind=str)
    augment: str = _key("standard", "training augmentation", choices=("none", "light", "standard"))
    # 2 by measurement (benchmarks/bench_views.py): within 1 point of a fresh view every
    # epoch, while each extra view adds one frozen forward pass per training image
    views: int = _key(2, "augmented views cached per training image (cache: true)", lo=1, hi=64)
    cache: bool = _key(True, "reuse frozen-backbone outputs across epochs and runs")
    balance: str = _key("none", "class imbalance: none | weights | sampler",
                        choices=("none", "weights", "sampler"))


@dataclass(frozen=True)
class TrainConfig:
    # auto (None) by measurement (benchmarks/sweep_epochs.py, bench_accuracy.py): see
    # stage.AUTO_HEAD for the stopping rule
    epochs: int | None = _key(None, "head-stage epochs; auto = until val loss stops improving",
                              lo=1, hi=10000, kind=int, auto=True)
    lr: float | None = _key(None, "head-stage learning rate; auto = chosen by short trials on "
                            "val loss", lo=0.0, hi=10.0, lo_open=True, kind=float, auto=True)
    weight_decay: float = _key(1.0e-4, "AdamW weight decay", lo=0.0, hi=1.0)
    label_smoothing: float = _key(0.0, "cross-entropy label smoothing", lo=0.0, hi=1.0,
                                  hi_open=True)
    patience: int | None = _key(None, "stop after this many epochs without a val-loss gain; "
                                "0 = off; auto = the auto rule's with auto epochs, else off",
                                lo=0, hi=10000, kind=int, auto=True)


@dataclass(frozen=True)
class FinetuneConfig:
    # its range depends on the arch: config._check_cross checks it and names the right one
    unfreeze: int = _key(0, "last N blocks of model.features to train; 0 = no finetune stage")
    epochs: int | None = _key(None, "finetune-stage epochs; auto = 3 with lr auto, else until "
                              "val loss stops improving", lo=1, hi=10000, kind=int, auto=True)
    lr: float | None = _key(None, "finetune-stage learning rate; auto = 3e-4, cosine-annealed "
                            "to 0 over the stage's epochs", lo=0.0, hi=10.0, lo_open=True,
                            kind=float, auto=True)
    train_bn: bool = _key(False, "let BatchNorm running statistics move in unfrozen blocks")


@dataclass(frozen=True)
class Config:
    name: str = _key("run", "run name: runs go to <output>/<name>, <name>-2, ...")
    output: str = _key("runs", "folder that holds run directories")
    seed: int = _key(0, "random seed (split, augmentation, init, order)", lo=0, hi=2**31 - 1)
    device: str = _key("auto", "auto | cpu | cuda | mps", choices=DEVICES)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    parent: str | None = field(default=None, metadata={"help": "run this one continues from"})

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML- and checkpoint-safe) of every key."""
        return dataclasses.asdict(self)

    @property
    def workers(self) -> int:
        """Decode worker processes; `auto` leaves the cores to the model on small machines."""
        import os

        if self.data.workers != "auto":
            return int(self.data.workers)
        return max(0, min(4, (os.cpu_count() or 1) // 2 - 1))


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig,
            "finetune": FinetuneConfig}


def all_keys() -> list[str]:
    """Every valid dotted key, for suggestions and `--set`."""
    keys = [f.name for f in fields(Config) if f.name not in SECTIONS]
    for section, cls in SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in fields(cls)]
    return keys
