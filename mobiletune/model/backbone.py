"""Backbones, the new head, and the freeze / BatchNorm policy of each stage.

The model stays torchvision's own module (state_dict keys `features.*`, `classifier.*`).
A stage is described by one number, the boundary k: blocks `features[:k]` are frozen and
`features[k:]` trainable. The head stage is k = len(features) (only `classifier[-1]` trains);
the finetune stage is k = len(features) - N (the tail and the whole classifier train).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mobiletune.config.schema import ARCHS
from mobiletune.errors import ConfigError, WeightsError
from mobiletune.vision import models

_BUILDERS = {"mobilenet_v2": (models.mobilenet_v2, models.MobileNet_V2_Weights),
             "mobilenet_v3_small": (models.mobilenet_v3_small, models.MobileNet_V3_Small_Weights),
             "mobilenet_v3_large": (models.mobilenet_v3_large, models.MobileNet_V3_Large_Weights)}


class EvalOnlyBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that refuses training mode, so running statistics never move.

    Frozen BatchNorms get this class in place (same parameters, same state_dict keys):
    a later `model.train()` reaches them through the normal recursion and is overruled
    here, which is the fix for the bug Lightning issue 15062 describes.
    """

    def train(self, mode: bool = True) -> "EvalOnlyBatchNorm2d":
        return super().train(False)


def _check_arch(arch: str) -> None:
    if arch not in _BUILDERS:
        raise ConfigError(f"Unknown arch {arch!r}; choose one of {', '.join(ARCHS)}.",
                          key="model.arch", value=arch, choices=ARCHS)


def weights_enum(arch: str, weights: str):
    """The torchvision weights entry whose `transforms()` define preprocessing.

    `imagenet` uses torchvision's DEFAULT; a local file or `none` uses IMAGENET1K_V1, the
    classic resize-256 / crop-224 recipe that the offline files were made for.
    """
    _check_arch(arch)
    enum = _BUILDERS[arch][1]
    return enum.DEFAULT if weights == "imagenet" else enum.IMAGENET1K_V1


def preprocess_spec(arch: str, weights: str, image_size: int) -> dict:
    """Eval preprocessing (resize, crop, mean, std) from the weights' own transforms, scaled
    to `image_size` (the crop) with the same resize/crop ratio."""
    t = weights_enum(arch, weights).transforms()
    spec = {"resize": int(t.resize_size[0]), "crop": int(t.crop_size[0]),
            "mean": [float(m) for m in t.mean], "std": [float(s) for s in t.std]}
    return rescale_preprocess(spec, image_size)


def rescale_preprocess(pre: dict, image_size: int) -> dict:
    """`pre` for another crop size, keeping its resize/crop ratio, mean and std."""
    return {**pre, "resize": round(image_size * pre["resize"] / pre["crop"]),
            "crop": int(image_size)}


def _download_imagenet(arch: str) -> dict:
    entry = weights_enum(arch, "imagenet")
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    target = cache_dir / Path(entry.url).name
    try:
        return entry.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # URLError, socket timeouts, SSL errors: all mean "no network"
        raise WeightsError(
            f"Could not load ImageNet weights for {arch}: downloading {entry.url} failed "
            f"({type(e).__name__}: {e}) and {target.name} is not in the torch cache "
            f"({cache_dir}). Without network, fetch that file on another machine and pass it "
            f"with --weights path/to/{target.name} (or model.weights: in the config), or "
            f"copy it into {cache_dir}; --weights none trains from random weights.") from None


def _guess_arch(state: dict) -> str | None:
    keys = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    for arch, (builder, _) in _BUILDERS.items():
        ref = {k: tuple(v.shape) for k, v in builder(weights=None).state_dict().items()}
        if set(ref) == set(keys) and all(ref[k] == keys[k] for k in ref
                                         if not k.startswith("classifier")):
            return arch
    return None


def _load_file(arch: str, path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"Weights file {p} not found. model.weights takes imagenet, none, "
                           "or the path of a torchvision state_dict (.pth).")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"Weights file {p} could not be read as a safe PyTorch state_dict "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from None
    if isinstance(state, dict) and "format_version" in state and "model" in state:
        raise WeightsError(f"{p} is a mobiletune checkpoint, not backbone weights: continue from "
                           "it with `mobiletune finetune --from` instead.")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{p} does not hold a state_dict (a mapping of names to tensors).")
    return state


def build_model(arch: str, weights: str, num_classes: int, dropout: float = 0.2) -> nn.Module:
    """A torchvision MobileNet with pretrained (or random) features and a new head."""
    _check_arch(arch)
    builder = _BUILDERS[arch][0]
    model = builder(weights=None)
    if weights != "none":
        state = _download_imagenet(arch) if weights == "imagenet" else _load_file(arch, weights)
        try:
            model.load_state_dict(state)
        except RuntimeError:
            guess = _guess_arch(state)
            looks = f"it looks like a {guess} state_dict" if guess else \
                "it matches none of " + ", ".join(ARCHS)
            raise WeightsError(f"Weights {weights} do not fit {arch}: {looks}. Set model.arch "
                               "to match the file, or use other weights.") from None
    head = model.classifier[-1]
    model.classifier[-1] = nn.Linear(head.in_features, num_classes)
    set_dropout(model, dropout)
    return model


def set_dropout(model: nn.Module, p: float) -> None:
    """Set the rate of the classifier's Dropout (the one right before the head)."""
    for m in model.classifier:
        if isinstance(m, nn.Dropout):
            m.p = p


def num_blocks(model: nn.Module) -> int:
    return len(model.features)


def boundary(model: nn.Module, unfreeze: int) -> int:
    """Index of the first trainable block for a stage that unfreezes the last `unfreeze`."""
    n = num_blocks(model)
    if not 0 <= unfreeze <= n:
        raise ConfigError(f"unfreeze is {unfreeze}, but this model has {n} blocks: use 1-{n} "
                          "(0 = head only).", key="finetune.unfreeze", value=unfreeze,
                          choices=(0, n))
    return n - unfreeze


def _set_bn(module: nn.Module, frozen: bool) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.__class__ = EvalOnlyBatchNorm2d if frozen else nn.BatchNorm2d
            if frozen:
                m.eval()


def configure_stage(model: nn.Module, unfreeze: int, train_bn: bool = False) -> list[nn.Parameter]:
    """Freeze everything but the stage's tail; put BatchNorm under the stage's policy.

    unfreeze = 0 is the head stage: only `classifier[-1]` trains. Otherwise the last
    `unfreeze` blocks and the whole classifier train. Returns the trainable parameters.
    """
    k = boundary(model, unfreeze)
    model.requires_grad_(False)
    _set_bn(model, frozen=True)
    trainable = [model.classifier[-1]] if unfreeze == 0 else [model.features[k:], model.classifier]
    for part in trainable:
        part.requires_grad_(True)
        if train_bn:
            _set_bn(part, frozen=False)
    model.train()
    return [p for p in model.parameters() if p.requires_grad]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters as two AdamW groups: weight decay for the weights that
    multiply (convolutions and linear layers, 2-D and up), none for biases and norm
    scales/shifts, as torchvision's `norm_weight_decay=0` and nanoGPT's
    `configure_optimizers` do: shrinking a bias or a BatchNorm scale toward 0 is not a
    simpler model, it shifts or mutes a channel."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"name": "decay", "params": [p for p in params if p.ndim >= 2],
             "weight_decay": weight_decay},
            {"name": "no_decay", "params": [p for p in params if p.ndim < 2],
             "weight_decay": 0.0}]


def is_bn_frozen(m: nn.Module) -> bool:
    return isinstance(m, EvalOnlyBatchNorm2d)


class HeadPrefix(nn.Module):
    """Everything before the head's Dropout, run frozen: features, pooling, classifier[:-2].

    The Dropout (classifier[-2] in every MobileNet) belongs to the Tail, so that it stays
    active on cached features and is never applied twice.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.features, self.pre = model.features, model.classifier[:-2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.pre(x)


class Tail(nn.Module):
    """The trainable part after the boundary: `features[k:]`, pooling and the classifier.

    For the head stage (k = len(features)) it takes HeadPrefix's output and runs only the
    Dropout and `classifier[-1]`. It shares its modules with the model, so training it trains
    the model and the checkpoint stays the plain model's state_dict.
    """

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.head_only = k == num_blocks(model)
        self.blocks = model.features[k:]
        self.classifier = model.classifier[-2:] if self.head_only else model.classifier

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.head_only:
            z = F.adaptive_avg_pool2d(self.blocks(z), 1).flatten(1)
        return self.classifier(z)


def split(model: nn.Module, unfreeze: int) -> tuple[nn.Module, nn.Module]:
    """(frozen prefix, trainable tail) for a stage; tail(prefix(x)) == model(x) in eval."""
    k = boundary(model, unfreeze)
    prefix = HeadPrefix(model) if unfreeze == 0 else model.features[:k]
    return prefix, Tail(model, k)


def has_depthwise(tail: nn.Module) -> bool:
    """Whether a tail on the CPU takes its input channels_last (only the input: the weights
    stay as they are): where it has depthwise convolutions, which oneDNN runs faster on that
    layout. Over MobileNetV2's last 3 blocks a float32 val pass took 0.88x the time and a
    bf16 training step 0.81x; a tail of the last block alone (1x1 convolutions: plain matrix
    products) took 1.2-1.4x, so it stays NCHW (benchmarks/bench_layout.py)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in tail.modules())


@dataclass(frozen=True)
class BlockRow:
    """One line of the stage table the CLI prints."""

    block: str
    trainable: bool
    params: int
    lr: float | None
    bn: str
    decayed: int = 0  # trainable parameters in the weight-decay group (see param_groups)


def stage_rows(model: nn.Module, lr: float) -> list[BlockRow]:
    """Block by block: trainable or frozen, parameter count, learning rate, BatchNorm mode."""
    parts = [(f"features.{i}", b) for i, b in enumerate(model.features)]
    parts += [(f"classifier.{i}", c) for i, c in enumerate(model.classifier)]
    rows = []
    for name, mod in parts:
        params = list(mod.parameters())
        train = any(p.requires_grad for p in params)
        bns = [m for m in mod.modules() if isinstance(m, nn.BatchNorm2d)]
        bn = "-" if not bns else ("frozen (eval)" if all(map(is_bn_frozen, bns)) else "training")
        decayed = sum(p.numel() for p in params if p.requires_grad and p.ndim >= 2)
        rows.append(BlockRow(name, train, sum(p.numel() for p in params), lr if train else None,
                             bn, decayed))
    return rows
