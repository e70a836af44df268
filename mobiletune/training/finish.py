"""What a run does after its last epoch: calibrate the selected model and score it for real.

The temperature is fitted on the val logits of the cached features (cheap) and folded into
the head, then the calibrated model is scored on the val images through the same path
`evaluate` and `predict` use (decode, eval transform, Predictor's engine). That score is
the run's one number: best.pt's metrics, the summary line and `evaluate` all show it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from mobiletune import dist
from mobiletune.config.schema import finetune_depth
from mobiletune.data.samples import Sample
from mobiletune.errors import CheckpointError
from mobiletune.evaluation.calibration import calibration_errors, choose_temperature
from mobiletune.evaluation.metrics import wilson_interval
from mobiletune.model.backbone import split
from mobiletune.model.checkpoint import load_checkpoint
from mobiletune.training.stage import StageData, StageSpec, val_logits


def fold_temperature(model: nn.Module, temperature: float) -> nn.Module:
    """Divide the head's logits by `temperature` for good (pass 1 / T to undo it)."""
    head = model.classifier[-1]
    with torch.no_grad():
        head.weight.div_(temperature)
        head.bias.div_(temperature)
    return model


def calibrate(model: nn.Module, spec: StageSpec, feed: StageData, device) -> float:
    """Fit T on the val logits of `feed` and fold it into `model` when it helps held-out
    images (calibration.choose_temperature); returns T (1.0: not calibrated)."""
    prefix, tail = split(model, spec.unfreeze)
    # every val image: under torchrun this runs on rank 0 alone, not on its share
    logits, labels = val_logits(tail, prefix, feed, device, shard=False)
    t = choose_temperature(logits.numpy(), labels.numpy())
    fold_temperature(model, t)
    return t


# what live_scores gives: the scores a kept parent brings along
LIVE_KEYS = ("val_acc", "val_loss", "n_val", "accuracy_ci95", "ece", "ece_uncalibrated")


def live_scores(probs: np.ndarray, labels: Sequence[int], temperature: float | None,
                fitted_here: bool) -> dict[str, Any]:
    """Accuracy with its Wilson interval, val loss (NLL of `probs`) and calibration errors."""
    y = np.asarray(labels, dtype=np.int64)
    correct = int((probs.argmax(1) == y).sum()) if len(y) else 0
    nll = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()) \
        if len(y) else 0.0
    return {"val_acc": correct / max(len(y), 1), "val_loss": nll, "n_val": int(len(y)),
            "accuracy_ci95": list(wilson_interval(correct, len(y))),
            **calibration_errors(probs, y, temperature, fitted_here)}


def score_live(model: nn.Module, class_names: list[str], pre: dict, samples: list[Sample],
               temperature: float | None, batch_size: int = 32,
               unfrozen: int = 0, cached_at: int = 0) -> dict[str, Any]:
    """Score `model` on `samples` exactly as `evaluate` does on the run's val split (the
    same backend, split where the checkpoint says its trained blocks start, or where its
    run cached: `cached_at`, see predict.backends.torch_backend)."""
    from mobiletune.predict.backends import torch_backend
    from mobiletune.predict.predictor import Predictor

    predictor = Predictor(torch_backend(model.eval(), class_names, pre, {}, unfrozen, cached_at))
    probs, _ = predictor.predict_probs([s.path for s in samples], batch_size)
    ok = ~np.isnan(probs).any(axis=1)  # unreadable since the scan: left out, as evaluate does
    labels = np.array([s.label for s in samples], dtype=np.int64)
    return live_scores(probs[ok].astype(np.float64), labels[ok], temperature, True)


def _load_parent(run) -> dict | None:
    """The best.pt of the run a finetune started from (None: no parent, or unreadable)."""
    if not run.cfg.parent:
        return None
    try:
        return load_checkpoint(run.cfg.parent)
    except CheckpointError:
        return None


def _parent_val_acc(run, parent: dict | None) -> float | None:
    """What fine-tuning has to beat: the parent run's live val accuracy on the same split,
    else (a head stage in this run) its epoch 0 row."""
    if parent is not None and parent["metrics"].get("scored") == "live":
        return float(parent["metrics"]["val_acc"])
    start = [r for r in run.history if r.stage == "finetune" and r.epoch == 0]
    return start[0].val_acc if start else None


def val_fingerprint(samples: Sequence[Sample], class_names: Sequence[str], pre: dict) -> str:
    """What a live score depends on besides the model: the val images' bytes and labels,
    the class names, the preprocessing, and the code and library versions that decode the
    images and run the engine (frozen.cache.code_version). Same fingerprint, same weights:
    same scores."""
    from concurrent.futures import ThreadPoolExecutor

    from mobiletune.frozen.cache import code_version, file_digest

    def digest(path: str) -> str:
        try:
            return file_digest(path)
        except OSError:  # gone since the scan: the live score leaves it out
            return "missing"

    with ThreadPoolExecutor(8) as pool:  # hashlib releases the GIL
        digests = list(pool.map(digest, [s.path for s in samples]))
    h = hashlib.sha256(json.dumps([code_version(), list(class_names), pre]).encode())
    for s, d in zip(samples, digests):
        h.update(f"{s.path}\0{s.label}\0{d}\n".encode())
    return h.hexdigest()[:32]


def _is_parent(weights: dict, parent: dict) -> bool:
    """Whether `weights` (a finetune's epoch 0) are `parent`'s model with its temperature
    unfolded from the head, as `finetune` loaded it."""
    state, t = parent["model"], float(parent.get("temperature") or 1.0)
    if weights.keys() != state.keys():
        return False
    head = max(int(k.split(".")[1]) for k in state if k.startswith("classifier."))
    for k, v in state.items():
        w = weights[k].to(v.dtype)
        if not (torch.allclose(w, v * t, rtol=1e-6, atol=0.0) if
                k.startswith(f"classifier.{head}.") else torch.equal(w, v)):
            return False
    return True


def _unbeaten_parent(parent: dict | None, ckpt: dict, fingerprint: str) -> dict | None:
    """The parent's best.pt, when fine-tuning never beat it (the selected epoch is 0: the
    parent's own weights) and the parent was scored live on these very val images: scoring
    them again would give its scores, so its weights, temperature and scores are kept as
    they are (calibrating and scoring again took 1.2 s of a 6.5 s finetune on hymenoptera)."""
    if parent is None or ckpt.get("stage") != "finetune" or ckpt.get("epoch") != 0:
        return None
    same = parent["metrics"].get("val_fingerprint") == fingerprint
    return parent if same and _is_parent(ckpt["model"], parent) else None


def finish_run(run, spec: StageSpec, feed: StageData, device, callbacks) -> None:
    """After a run's last stage (`run`: runstate.Run): calibrate its best checkpoint, score
    it live, and make that the run's best (written once, as best.pt, by the caller). A
    finetune that never beat its parent keeps the parent as it was scored."""
    ckpt = run.best_checkpoint() if dist.is_main() else None  # one writer: rank 0
    if ckpt is None:
        return
    val = run.data.of("val")
    fingerprint = val_fingerprint(val, run.data.classes, run.pre)
    parent = _load_parent(run)  # read once: whether it is kept, and what to beat
    kept = _unbeaten_parent(parent, ckpt, fingerprint)
    if kept is not None:
        state, t = kept["model"], kept.get("temperature")
        scores = {k: v for k, v in kept["metrics"].items() if k in LIVE_KEYS}
        how = f"the parent model, as scored by its run ({run.cfg.parent})"
    else:
        callbacks.on_message("scoring the selected model on the val images")
        model = copy.deepcopy(run.model)  # last.pt keeps the last epoch's weights
        model.load_state_dict(ckpt["model"])
        t = calibrate(model, spec, feed, device)
        model.cpu()  # scored as predict and evaluate score it
        scores = score_live(model, list(run.data.classes), run.pre, val, t,
                            unfrozen=int(ckpt.get("unfrozen_blocks") or 0),
                            cached_at=finetune_depth(run.cfg.model.arch, run.cfg.finetune.unfreeze))
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        how = f"scored on {scores['n_val']} val images"
    ckpt = {**ckpt, "model": state, "temperature": t,
            "metrics": {**ckpt["metrics"], **scores, "temperature": t, "scored": "live",
                        "val_fingerprint": fingerprint}}
    if spec.unfreeze:
        ckpt["metrics"]["parent_val_acc"] = _parent_val_acc(run, parent)
    run.set_best(ckpt)
    lo, hi = scores["accuracy_ci95"]
    run.log(f"final: {ckpt['stage']} epoch {ckpt['epoch']} {how}: val_acc "
            f"{scores['val_acc']:.4f} (95% CI {lo:.3f}-{hi:.3f}) val_loss "
            f"{scores['val_loss']:.4f} ece {scores['ece']:.4f} (uncalibrated "
            f"{scores['ece_uncalibrated']:.4f}) temperature {t:.3g}")
