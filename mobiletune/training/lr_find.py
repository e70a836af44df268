"""`lr: auto`: the learning rate chosen by trying, not by reading a plot.

Each candidate rate trains the stage's trainable part for a short trial from the same
starting weights, on the stage's own (cached) batches, and the rate whose trial ends at the
lowest val loss is the stage's rate. The weights are put back before the stage starts. The
head's trials cost milliseconds (a linear layer on cached features); a finetune stage's,
half an epoch per candidate. fastai's `lr_find` and Lightning's LR finder draw a loss curve
for the user to read; this chooses, and says what it chose.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
from torch import nn

from mobiletune import dist
from mobiletune.model.backbone import configure_stage, split
from mobiletune.training.stage import StageData, StageSpec, evaluate, make_optimizer, step_batch

# Around the rates that worked by hand (head 1e-3; finetune 1e-5 to 1e-4 measured in issue 19
# on a 10-class set), half a decade apart.
CANDIDATES = {"head": (3e-4, 1e-3, 3e-3, 1e-2), "finetune": (1e-5, 3e-5, 1e-4, 3e-4)}
# Share of an epoch each candidate trains: whole epochs of a head cost milliseconds.
TRIAL_EPOCHS = {"head": 2.0, "finetune": 0.5}
# Under torchrun the trials would need their own DDP wrapper; these fixed rates are used there.
FALLBACK = {"head": 1e-3, "finetune": 1e-5}


def choose_lr(model: nn.Module, spec: StageSpec, data: StageData, device, seed: int
              ) -> tuple[float, dict[float, float]]:
    """(the chosen rate, val loss after each candidate's trial) for `spec`'s stage."""
    if dist.active():
        return FALLBACK[spec.name], {}
    configure_stage(model, spec.unfreeze, spec.train_bn)
    prefix, tail = split(model, spec.unfreeze)
    model.to(device)
    start = copy.deepcopy(tail.state_dict())
    steps = max(1, math.ceil(data.steps_per_epoch * TRIAL_EPOCHS[spec.name]))
    losses: dict[float, float] = {}
    for lr in CANDIDATES[spec.name]:
        tail.load_state_dict(start)
        _trial(model, tail, prefix, dataclasses.replace(spec, lr=lr), data, device, seed, steps)
        losses[lr] = evaluate(tail, prefix, data, device)[0]
    tail.load_state_dict(start)
    finite = {lr: v for lr, v in losses.items() if math.isfinite(v)}
    return (min(finite, key=finite.get) if finite else FALLBACK[spec.name]), losses


def _trial(model, tail, prefix, spec: StageSpec, data: StageData, device, seed: int,
           steps: int) -> None:
    """`steps` optimizer steps at `spec.lr`, every candidate on the same batches in the same
    order (and the same dropout masks)."""
    torch.manual_seed(seed)
    opt = make_optimizer(model, spec)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)
    model.train()  # frozen BatchNorm stays in eval mode (model.EvalOnlyBatchNorm2d)
    done, epoch = 0, 0
    while done < steps:
        for x, y in data.train_batches(seed + epoch):
            _, loss, _ = step_batch(tail, prefix, data, x, y, device, loss_fn)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                return
        epoch += 1
