"""`lr: auto`: the learning rate chosen by trying, not by reading a plot.

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

Finetune stage (`race`): a short trial misleads there. From a converged head, Adam's first
steps at a useful rate raise val loss before they lower it (grocery_produce, seed 0: at 1e-4
val loss went 0.137 -> 0.175 after one epoch -> 0.105 after two, while 1e-5 stayed near
0.135), so half-epoch trials at 1e-5..3e-4 always picked the smallest rate, and the best
fixed rate was 1e-4 or 3e-4 on every set measured (benchmarks/bench_lr.py,
docs/training.md). So 1e-4, the default, and 3e-4, the challenger, race two whole epochs of
the stage itself (same batches, same seeds), and the winner's epochs are kept: the stage goes
on from where its race ended, exactly as a run at that fixed rate would have. The
challenger wins only when its per-image val losses beat the default's by two standard errors
of their paired difference: on 150 val images the plain lower mean picked 3e-4 on noise and
lost 0.7 points against 1e-4 over three seeds. The extra cost is the loser's two epochs.
Epoch 0 (the parent) stays the best until an epoch beats it, so a rate too high for a data
set costs time, never the parent's accuracy.

fastai's `lr_find` and Lightning's LR finder draw a loss curve for the user to read; this
chooses, and says what it chose.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from mobiletune import dist
from mobiletune.config.load import dump_yaml
from mobiletune.fileio import write_text
from mobiletune.model.backbone import configure_stage, split, stage_rows
from mobiletune.training.stage import (
    Callbacks,
    StageData,
    StageSpec,
    StageState,
    evaluate,
    fit_stage,
    make_optimizer,
    stage_threads,
    step_batch,
    val_logits,
)


@dataclass
class Lap:
    """One epoch of a racing rate, as the stage's `save` saw it: its state after the epoch,
    whether it was the best so far, and the trainable weights then."""

    state: StageState
    is_best: bool
    tail: dict[str, torch.Tensor]


@dataclass
class RaceResult:
    """The winning rate, each rate's best val loss in the race, the winner's laps (to replay
    into the run; the stage goes on from the last one) and the challenger's gain."""

    lr: float
    losses: dict[float, float]
    laps: list[Lap]
    gain: tuple[float, float]  # the challenger's paired val-loss gain: (mean, standard error)


# Around the rate that worked by hand (1e-3), half a decade apart; five epochs each.
HEAD_RATES = (3e-4, 1e-3, 3e-3, 1e-2)
TRIAL_EPOCHS = 5.0
# The finetune race: the two rates that measured best (bench_lr.py: 1e-4 or 3e-4 led on
# grocery_produce, hymenoptera and issue 19's 10-class set; 1e-5 and 3e-5 never did), the
# default first, over the horizon at which the first steps' disturbance is over.
RACE = {"rates": (1e-4, 3e-4), "epochs": 2, "standard_errors": 2.0}
# Under torchrun the trials would need their own DDP wrapper; these fixed rates are used there.
FALLBACK = {"head": 1e-3, "finetune": 1e-4}


def choose_lr(model: nn.Module, spec: StageSpec, data: StageData, device, seed: int
              ) -> tuple[float, dict[float, float]]:
    """(the chosen rate, val loss after each candidate's trial) for a head stage; under
    torchrun, for either stage, the fixed rate and no trials."""
    if dist.active():
        return FALLBACK[spec.name], {}
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
    return (min(finite, key=finite.get) if finite else FALLBACK[spec.name]), losses


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


def race(model: nn.Module, spec: StageSpec, data: StageData, device, seed: int,
         state: StageState, class_weights: torch.Tensor | None = None) -> RaceResult:
    """Each of RACE's rates trains the first RACE["epochs"] epochs of the finetune stage
    `spec` from `state` (fit_stage itself, silently). The challenger (the second rate) wins
    when, at the best epoch of each, its per-image val losses are lower than the default's by
    RACE["standard_errors"] standard errors; else the default. The model is left at the
    winner's last epoch."""
    configure_stage(model, spec.unfreeze, spec.train_bn)
    _, tail = split(model, spec.unfreeze)
    start, laps = _copy(tail), {}
    for lr in RACE["rates"]:
        tail.load_state_dict(start)
        laps[lr] = []

        def save(st: StageState, is_best: bool, mine: list = laps[lr]) -> None:
            mine.append(Lap(copy.deepcopy(st), is_best, _copy(tail)))

        fit_stage(model, dataclasses.replace(spec, lr=lr), data, seed=seed, device=device,
                  state=copy.deepcopy(state), save=save, callbacks=Callbacks(),
                  class_weights=class_weights, until=RACE["epochs"], announce=False)
    best = {lr: min((lap for lap in laps[lr] if lap.state.history[-1].epoch > 0),
                    key=lambda lap: _nan_last(lap.state.history[-1].val_loss))
            for lr in RACE["rates"]}
    losses = {lr: lap.state.history[-1].val_loss for lr, lap in best.items()}
    per_image = [_val_losses(model, spec.unfreeze, best[lr].tail, data, device)
                 for lr in RACE["rates"]]
    win, gain = winner(*per_image)
    tail.load_state_dict(laps[win][-1].tail)
    return RaceResult(win, losses, laps[win], gain)


def winner(default: torch.Tensor, challenger: torch.Tensor) -> tuple[float, tuple[float, float]]:
    """(the winning rate, the challenger's gain) from the two rates' per-image val losses."""
    gain = paired_gain(default, challenger)
    return RACE["rates"][1 if gain[0] > RACE["standard_errors"] * gain[1] else 0], gain


def paired_gain(default: torch.Tensor, challenger: torch.Tensor) -> tuple[float, float]:
    """(mean, standard error) of how much lower the challenger's per-image losses are than
    the default's, on the same images; a NaN anywhere counts as no gain."""
    d = (default - challenger).double()
    if len(d) < 2 or not torch.isfinite(d).all():
        return 0.0, math.inf
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


def _val_losses(model: nn.Module, unfreeze: int, weights: dict, data: StageData,
                device) -> torch.Tensor:
    prefix, tail = split(model, unfreeze)
    tail.load_state_dict(weights)
    logits, y = val_logits(tail, prefix, data, device)
    return nn.functional.cross_entropy(logits, y, reduction="none")


def _nan_last(x: float) -> float:
    return x if math.isfinite(x) else math.inf


def _copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def auto_lr(run, spec: StageSpec, feed, callbacks: Callbacks,
             weights: torch.Tensor | None) -> tuple[StageSpec, bool]:
    """`lr: auto` for this stage, recorded where the run's settings live: the stage (so
    last.pt resumes with it), config.yaml, train.log. A head stage's rate comes from short
    trials; a finetune stage's from a race whose winner's epochs are kept (replayed into the
    run here). Returns the spec and whether its stage has started (and was announced)."""
    raced = spec.name == "finetune" and not dist.active()
    if raced:
        rates = " and ".join(f"{r:g}" for r in RACE["rates"])
        callbacks.on_message(f"learning rate (auto): racing {rates} over the first "
                             f"{RACE['epochs']} epochs of the {spec.name} stage")
    with stage_threads(spec, feed, run.device):
        if raced:
            result = race(run.model, spec, feed, run.device, run.cfg.seed, run.state, weights)
            lr, losses = result.lr, result.losses
        else:
            lr, losses = choose_lr(run.model, spec, feed, run.device, run.cfg.seed)
    spec = dataclasses.replace(spec, lr=lr)
    run.stages[run.stage_index] = spec
    section = "train" if spec.name == "head" else "finetune"
    run.cfg = dataclasses.replace(run.cfg, **{section: dataclasses.replace(
        getattr(run.cfg, section), lr=lr)})
    if dist.is_main():
        write_text(run.dir / "config.yaml", dump_yaml(run.cfg))
    tried = ", ".join(f"{c:g} {v:.3f}" for c, v in losses.items())
    if raced:
        challenger = RACE["rates"][1]
        how = (f"{RACE['epochs']}-epoch race, kept as the stage's first epochs; {challenger:g} "
               f"wins only by {RACE['standard_errors']:g} standard errors of the per-image "
               f"val loss: {result.gain[0]:+.3f} +- {result.gain[1]:.3f}; best val loss")
    else:
        how = "val loss after a short trial at each rate"
    text = f"learning rate (auto): {lr:g} for the {spec.name} stage" + (
        f" ({how}: {tried})" if tried else " (the fixed default: no trials under torchrun)")
    callbacks.on_message(text)
    run.log(text)
    if raced:
        _replay(run, spec, result, callbacks)
    return spec, raced


def _replay(run, spec: StageSpec, result, callbacks: Callbacks) -> None:
    """The race winner's epochs, into the run as if the stage had trained them here."""
    _, tail = split(run.model, spec.unfreeze)
    callbacks.on_stage_start(spec, stage_rows(run.model, spec.lr))
    for lap in result.laps:  # the last one leaves the weights where the stage goes on
        tail.load_state_dict(lap.tail)  # best.pt snapshots the weights of its epoch
        run.save(lap.state, lap.is_best)
        callbacks.on_epoch_end(lap.state.history[-1], lap.is_best)
    run.state = result.laps[-1].state  # with the optimizer's and scheduler's state
