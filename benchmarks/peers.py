"""The peers mobiletune is measured against in benchmarks/bench_train.py: a hand-written
PyTorch loop, PyTorch Lightning and fastai, each doing the same job as its users write it.

Lightning and fastai come with the bench extra (`pip install -e '.[bench]'`); a contender whose
library is missing returns None and its row is left out.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, models
from torchvision import transforms as T

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_offline.pth"
# BatchNorm statistics restored (weights/README.md): for recipes that train BatchNorm (fastai)
WEIGHTS_BN = SHARED / "weights" / "mobilenet_v2_imagenet_offline_bn.pth"
DATA = SHARED / "datasets" / "hymenoptera"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class Result:
    """Wall time, final val accuracy, and (seconds since start, val acc) after each epoch."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.curve: list[tuple[float, float]] = []
        self.seconds = 0.0

    def epoch(self, acc: float) -> None:
        self.curve.append((time.perf_counter() - self.start, acc))

    def done(self) -> Result:
        self.seconds = time.perf_counter() - self.start
        return self

    @property
    def acc(self) -> float:
        return self.curve[-1][1] if self.curve else float("nan")

    def time_to(self, target: float) -> float | None:
        return next((t for t, a in self.curve if a >= target), None)


def _loaders():
    tf_train = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(MEAN, STD)])
    tf_val = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    train = datasets.ImageFolder(DATA / "train", tf_train)
    val = datasets.ImageFolder(DATA / "val", tf_val)
    return (torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, num_workers=1),
            torch.utils.data.DataLoader(val, batch_size=32, num_workers=1), len(train.classes))


def _pretrained(classes: int) -> nn.Module:
    model = models.mobilenet_v2()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    model.classifier[-1] = nn.Linear(1280, classes)
    return model


def hand_written(head_epochs: int, ft_epochs: int, seed: int = 0) -> Result:
    """The baseline: the transfer-learning tutorial's loop, frozen BN, full forward per step."""
    res = Result()
    torch.manual_seed(seed)
    tl, vl, classes = _loaders()
    model = _pretrained(classes)
    for stage, epochs, lr in (("head", head_epochs, 1e-3), ("ft", ft_epochs, 1e-5)):
        model.requires_grad_(False)
        trainable = [model.classifier] + ([model.features[-3:]] if stage == "ft" else [])
        for m in trainable:
            m.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
        for _ in range(epochs):
            model.train()
            for m in model.modules():  # hold every BatchNorm in eval mode
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
            for x, y in tl:
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            res.epoch(_accuracy(model, vl))
    return res.done()


def _accuracy(model: nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def lightning_run(head_epochs: int, ft_epochs: int, seed: int = 0) -> Result | None:
    """The same job as many users write it: a LightningModule and Lightning's
    BackboneFinetuning callback, which unfreezes `backbone` (here the last 3 blocks) after
    the head epochs. Every BatchNorm is held in eval mode, as in the other two: with
    train_bn=False alone, Lightning's frozen BatchNorm stops tracking statistics but still
    normalizes training batches with their own (Lightning issue 15062); measured, 0.54 val
    accuracy after one head epoch where the other two reach 0.7-0.9."""
    try:
        import lightning as L
        from lightning.pytorch.callbacks import BackboneFinetuning
    except ImportError:
        return None
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    res = Result()
    L.seed_everything(seed, verbose=False)
    tl, vl, classes = _loaders()
    model = _pretrained(classes)

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.frozen = model.features[:-3].requires_grad_(False)
            self.backbone = model.features[-3:]  # what BackboneFinetuning freezes, then unfreezes
            self.head = model.classifier

        def forward(self, x):
            with torch.no_grad():
                x = self.frozen(x)
            x = nn.functional.adaptive_avg_pool2d(self.backbone(x), 1).flatten(1)
            return self.head(x)

        def on_train_epoch_start(self) -> None:
            for m in self.modules():  # after Lightning's model.train()
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_acc", (self(x).argmax(1) == y).float().mean(), on_epoch=True)

        def configure_optimizers(self):
            trainable = [p for p in self.parameters() if p.requires_grad]
            return torch.optim.AdamW(trainable, lr=1e-3, weight_decay=1e-4)

    class Curve(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                res.epoch(float(trainer.callback_metrics["val_acc"]))

    finetune = BackboneFinetuning(unfreeze_backbone_at_epoch=head_epochs if ft_epochs else 10**6,
                                  backbone_initial_lr=1e-5, initial_denom_lr=1.0, train_bn=False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(max_epochs=head_epochs + ft_epochs, accelerator="cpu", devices=1,
                            callbacks=[finetune, Curve()], default_root_dir=tmp,
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(Classifier(), tl, vl)
    return res.done()


def fastai_run(head_epochs: int, ft_epochs: int, seed: int = 0) -> Result | None:
    """fastai's documented recipe: `ImageDataLoaders.from_folder` with its presizing
    transforms (Resize 460, `aug_transforms(size=224)`), `vision_learner` (its own head,
    BatchNorm trained: train_bn=True) and `fine_tune`: `freeze_epochs` on the head, then the
    whole network unfrozen at discriminative rates around its default base_lr (2e-3). The
    head-only job is fine_tune's first phase alone. Weights: the file with real BatchNorm
    statistics (the folded one collapses under BatchNorm in train mode)."""
    try:
        from fastai.vision.all import (
            Callback,
            ImageDataLoaders,
            Resize,
            accuracy,
            aug_transforms,
            default_split,
            imagenet_stats,
            model_meta,
            set_seed,
            vision_learner,
        )
    except ImportError:
        return None
    res = Result()
    set_seed(seed)

    class Curve(Callback):
        order = 60  # after the Recorder has the epoch's metrics

        def after_epoch(self) -> None:
            res.epoch(float(self.learn.recorder.values[-1][-1]))

    def arch(pretrained: bool = True) -> nn.Module:
        model = models.mobilenet_v2()
        model.load_state_dict(torch.load(WEIGHTS_BN, weights_only=True))
        return model

    dls = ImageDataLoaders.from_folder(DATA, train="train", valid="val", bs=32, num_workers=1,
                                       item_tfms=Resize(460), batch_tfms=aug_transforms(size=224),
                                       device=torch.device("cpu"), seed=seed)
    # how fastai cuts an arch it does not know: the body is model.features (children[:-1]);
    # vision_learner's own `cut=` does not reach create_vision_model in fastai 2.8
    model_meta[arch] = {"cut": -1, "split": default_split, "stats": imagenet_stats}
    learn = vision_learner(dls, arch, metrics=accuracy, cbs=[Curve()])
    with learn.no_bar(), learn.no_logging():
        if ft_epochs:
            learn.fine_tune(ft_epochs, freeze_epochs=head_epochs)
        else:  # fine_tune's frozen phase
            learn.freeze()
            learn.fit_one_cycle(head_epochs, slice(2e-3), pct_start=0.99)
    return res.done()
