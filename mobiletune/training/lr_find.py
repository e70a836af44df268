"""`lr: auto`: the head's rate chosen by trying, the finetune's a measured recipe; no plot to read.

Head stage (`choose_lr`): each candidate rate trains the head for five epochs (fewer when
the stage itself is set shorter) from the same starting weights on the cached features
(milliseconds), the rate whose trial ends at the lowest val loss is the stage's rate, and the
weights are put back before the stage starts.
Five, not two: a two-epoch trial favours the largest rate, which is ahead early and ends
worse (an overconfident head). Against full head stages at each rate on ../shared's two sets,
seeds 0-2, two-epoch trials picked 1e-2 three times and the rate whose stage ended at the
lowest val loss 3 of 6 times; five-epoch trials picked 3e-3 every time, 4 of 6, and the runs
at their rates ended at a lower mean val loss (0.095 against 0.101) and an equal or higher
mean val accuracy; ten-epoch trials, twice the cost, picked it 5 of 6 times with no better
accuracy (benchmarks/bench_head_lr.py, docs/training.md).

Finetune stage (`finetune_recipe`): no trials. From a converged head, Adam's first steps at
a useful rate raise val loss before they lower it (grocery_produce, seed 0: at 1e-4 val loss
went 0.137 -> 0.177 after one epoch -> 0.106 after two, while 1e-5 stayed near 0.137), so a
short trial picks the smallest rate, and a race of whole epochs costs its loser's epochs: a
two-epoch race of 1e-4 against 3e-4 made `finetune` 1.15-1.19x slower than `--lr 1e-5` and
never chose 3e-4 (benchmarks/bench_lr.py, 2026-12-02). At a constant rate the val loss of
the later epochs jumps (1e-4: 0.076, 0.118, 0.132) and a lucky epoch restarts patience. So
auto is the rate that measured best, annealed: 3e-4, cosine-decayed to zero over 3 epochs.
Over seeds 0-4 it matched or beat the best constant rate under the patience rule on both of
../shared's sets (grocery_produce 0.988 against 0.986 for 1e-4; hymenoptera 0.963 against
0.963) in 3 epochs, where `--lr 1e-5` ran 4.6 and 4.0 on average
(benchmarks/sweep_finetune_lr.py, docs/training.md). Val loss still checks it: epoch 0 (the
parent) stays the best until an epoch beats it, so a rate too high for a data set costs its
3 epochs, never the parent's accuracy. A number for `lr` keeps the patience rule.

fastai's `lr_find` and Lightning's LR finder draw a loss curve for the user to read; this
chooses, and says what it chose (train.log, config.yaml, the terminal).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
from torch import nn

from mobiletune import dist
from mobiletune.config.load import dump_yaml
from mobiletune.fileio import write_text
from mobiletune.model.backbone import configure_stage, split
from mobiletune.training.stage import (
    Callbacks,
    StageData,
    StageSpec,
    evaluate,
    make_optimizer,
    stage_threads,
    step_batch,
)

# Around the rate that worked by hand (1e-3), half a decade apart; five epochs each.
HEAD_RATES = (3e-4, 1e-3, 3e-3, 1e-2)
TRIAL_EPOCHS = 5.0
# The finetune stage's auto recipe: its rate and, when `epochs` is unset, its length (cosine).
FINETUNE = {"lr": 3e-4, "epochs": 3}
# Under torchrun the head trials would need their own DDP wrapper; this fixed rate is used.
FALLBACK = {"head": 1e-3}


def choose_lr(model: nn.Module, spec: StageSpec, data: StageData, device, seed: int
              ) -> tuple[float, dict[float, float]]:
    """(the chosen rate, val loss after each candidate's trial) for a head stage; under
    torchrun, the fixed rate and no trials."""
    if dist.active():
        return FALLBACK["head"], {}
    configure_stage(model, spec.unfreeze, spec.train_bn)
    prefix, tail = split(model, spec.unfreeze)
    model.to(device)
    start = copy.deepcopy(tail.state_dict())
    steps = max(1, math.ceil(data.steps_per_epoch * trial_epochs(spec)))
    losses: dict[float, float] = {}
    for lr in HEAD_RATES:
        tail.load_state_dict(start)
        _trial(model, tail, prefix, dataclasses.replace(spec, lr=lr), data, device, seed, steps)
        losses[lr] = evaluate(tail, prefix, data, device)[0]
    tail.load_state_dict(start)
    finite = {lr: v for lr, v in losses.items() if math.isfinite(v)}
    return (min(finite, key=finite.get) if finite else FALLBACK["head"]), losses


def trial_epochs(spec: StageSpec) -> float:
    """How long each head trial trains: TRIAL_EPOCHS, or the stage's own epochs when a
    user set fewer (`epochs: 2` wants the rate that is best after two epochs: the fast one)."""
    return TRIAL_EPOCHS if spec.auto else min(TRIAL_EPOCHS, float(spec.epochs))


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


def finetune_recipe(spec: StageSpec) -> StageSpec:
    """`lr: auto` for a finetune stage: FINETUNE's rate; with `epochs` unset (`spec.auto`),
    also its length, cosine-decayed, without patience (3 epochs leave it nothing to stop)."""
    spec = dataclasses.replace(spec, lr=FINETUNE["lr"])
    if spec.auto:
        spec = dataclasses.replace(spec, epochs=FINETUNE["epochs"], schedule="cosine",
                                   patience=0, auto=False)
    return spec


def auto_lr(run, spec: StageSpec, feed, callbacks: Callbacks) -> StageSpec:
    """`lr: auto` for this stage, recorded where the run's settings live: the stage (so
    last.pt resumes with it), config.yaml (a rerun from it trains the same stage), train.log
    and the terminal. A head stage's rate comes from short trials, a finetune stage's from
    FINETUNE."""
    if spec.name == "finetune":
        resolved = finetune_recipe(spec)
        how = (f"cosine-annealed to 0 over {resolved.epochs} epochs" + (
            "" if spec.auto else ", the number set") + "; the parent stays the best until an "
            "epoch beats its val loss")
        changes = {"lr": resolved.lr, "epochs": resolved.epochs}
    else:
        with stage_threads(spec, feed, run.device):
            lr, losses = choose_lr(run.model, spec, feed, run.device, run.cfg.seed)
        resolved, changes = dataclasses.replace(spec, lr=lr), {"lr": lr}
        tried = ", ".join(f"{c:g} {v:.3f}" for c, v in losses.items())
        how = (f"val loss after a short trial at each rate: {tried}" if tried
               else "the fixed default: no trials under torchrun")
    run.stages[run.stage_index] = resolved
    section = "train" if spec.name == "head" else "finetune"
    run.cfg = dataclasses.replace(run.cfg, **{section: dataclasses.replace(
        getattr(run.cfg, section), **changes)})
    if dist.is_main():
        write_text(run.dir / "config.yaml", dump_yaml(run.cfg))
    text = f"learning rate (auto): {resolved.lr:g} for the {spec.name} stage ({how})"
    callbacks.on_message(text)
    run.log(text)
    return resolved
