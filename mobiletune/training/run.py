"""A whole run: scan, run directory, stages; `train`, `finetune` and `resume`.

Everything a run makes lands in its own new directory; what a run holds while it trains, and
when its checkpoints reach the disk, is mobiletune/runstate.py.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobiletune import dist
from mobiletune.config.load import config_from_dict, dump_yaml
from mobiletune.config.overrides import (
    refuse_unhonoured_finetune,
)
from mobiletune.config.schema import DEVICES, FINETUNE_DEFAULT, Config
from mobiletune.data.samples import ScanResult
from mobiletune.data.scan import read_splits, scan
from mobiletune.errors import CheckpointError, ConfigError, TrainingInterrupted
from mobiletune.fileio import new_run_dir, write_csv, write_text
from mobiletune.frozen.feeds import FeedSpec, class_weights, make_feed
from mobiletune.frozen.integrity import take_notices
from mobiletune.model.backbone import (
    boundary,
    build_model,
    preprocess_spec,
    rescale_preprocess,
    set_dropout,
)
from mobiletune.model.checkpoint import load_checkpoint, model_from_checkpoint
from mobiletune.training.finish import finish_run, fold_temperature
from mobiletune.training.lr_find import auto_lr
from mobiletune.training.runstate import Run
from mobiletune.training.stage import (
    AUTO_FINETUNE,
    AUTO_HEAD,
    AUTO_SCHEDULE,
    Callbacks,
    StageSpec,
    StageState,
    fit_stage,
    stage_threads,
)


def pick_device(name: str) -> torch.device:
    """auto: cuda, then mps, then cpu. A device this machine lacks is a ConfigError, raised
    before any run directory exists."""
    mps = getattr(torch.backends, "mps", None)
    has = {"cpu": True, "cuda": torch.cuda.is_available(),
           "mps": bool(mps and mps.is_available())}
    if name == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if has[d]))
    if not has.get(name, False):
        what = {"cuda": "no usable CUDA GPU", "mps": "no Apple-silicon GPU (MPS)"}.get(name, name)
        usable = ", ".join(d for d in DEVICES if has.get(d, True))
        raise ConfigError(f"device is {name}, but this machine has {what}; use --device "
                          f"cpu or auto (usable here: {usable}).", key="device", value=name,
                          choices=DEVICES)
    return torch.device(name)


def _length(epochs: int | None, patience: int | None, rule: dict) -> dict[str, Any]:
    """Unset epochs: the auto rule (a cap, and patience unless set); set: exactly that many
    epochs unless patience is set."""
    if epochs is None:
        return {"epochs": rule["cap"], "auto": True, "schedule": AUTO_SCHEDULE,
                "patience": rule["patience"] if patience is None else patience}
    return {"epochs": epochs, "patience": patience or 0}


def plan(cfg: Config, head: bool = True) -> list[StageSpec]:
    """The stages a config asks for, in order."""
    t, f = cfg.train, cfg.finetune
    stages = [StageSpec("head", 0, lr=t.lr, weight_decay=t.weight_decay,
                        label_smoothing=t.label_smoothing,
                        **_length(t.epochs, t.patience, AUTO_HEAD))] if head else []
    if f.unfreeze:
        stages.append(StageSpec("finetune", f.unfreeze, lr=f.lr, weight_decay=t.weight_decay,
                                label_smoothing=t.label_smoothing, train_bn=f.train_bn,
                                **_length(f.epochs, t.patience, AUTO_FINETUNE)))
    return stages


def _launch(cfg: Config, data: ScanResult, model: nn.Module, pre: dict,
            stages: list[StageSpec], callbacks: Callbacks, device: torch.device) -> Path:
    """Check, make the run directory, train. The device is checked by the caller (before
    anything is read); the stages' unfreeze ranges here, before a run directory exists. A
    run that fails before its first epoch is removed again (it holds only what this call
    wrote), so no empty run is left and `latest` keeps pointing at the last run that
    trained. An interrupted run is kept: its last.pt resumes it."""
    for spec in stages:
        boundary(model, spec.unfreeze)
    # rank 0 makes the directory; every rank learns its name (or rank 0's error)
    run_dir = Path(dist.on_main(lambda: str(new_run_dir(cfg.output, cfg.name))))
    run = Run(run_dir, cfg, data, model, pre, stages, device=device)
    try:
        _start(run, callbacks)
        return execute(run, callbacks)
    except TrainingInterrupted:  # kept (last.pt resumes it); `latest` only once it trained
        raise
    except Exception:
        if dist.is_main() and not run.started:
            shutil.rmtree(run.dir, ignore_errors=True)
        raise


def _start(run: Run, callbacks: Callbacks) -> None:
    if not dist.is_main():
        return
    run_dir, cfg, data = run.dir, run.cfg, run.data
    write_text(run_dir / "config.yaml", dump_yaml(cfg))
    write_csv(run_dir / "splits.csv", ["path", "label", "split"],
              [(s.path, data.classes[s.label], s.split) for s in data.samples])
    write_csv(run_dir / "skipped.csv", ["path", "reason"], data.skipped)
    for w in data.warnings:
        run.log(f"warning: {w}")
        callbacks.on_message(f"warning: {w}")
    if data.skipped:
        msg = f"skipped {len(data.skipped)} file(s) that are not usable images; see {run_dir / 'skipped.csv'}"
        run.log(msg)
        callbacks.on_message(msg)
    run.write_last()
    callbacks.on_message(f"run directory: {run_dir}")


def scan_config(cfg: Config, callbacks: Callbacks | None = None) -> ScanResult:
    """The data of a config (scanned on rank 0, shared with every rank)."""
    # rank 0 scans and every rank gets its result: one split, one read of the folder
    progress = (lambda d, t: callbacks.on_progress("scan", d, t)) if callbacks else None
    return dist.on_main(lambda: scan(cfg.data.root, cfg.data.val_split, cfg.seed, progress,
                                     labels=cfg.data.labels or None))


def execute(run: Run, callbacks: Callbacks) -> Path:
    """Run the remaining stages of `run`; Ctrl-C / SIGTERM leave a resumable last.pt."""
    device = run.device
    torch.set_flush_denormal(True)  # denormal floats make CPU convolutions crawl
    try:
        while run.stage_index < len(run.stages):
            spec = run.stages[run.stage_index]
            feed = make_feed(FeedSpec.of(run.cfg), run.data, run.pre, run.model, spec.unfreeze,
                             device, callbacks)
            train_labels = [s.label for s in run.data.of("train")]
            weights = class_weights(train_labels, len(run.data.classes)) \
                if run.cfg.data.balance == "weights" else None
            if spec.lr is None:
                spec = auto_lr(run, spec, feed, callbacks)
            with stage_threads(spec, feed, device):
                state = fit_stage(run.model, spec, feed, seed=run.cfg.seed, device=device,
                                  state=run.state, save=run.save, callbacks=callbacks,
                                  class_weights=weights)
            final = run.stage_index == len(run.stages) - 1
            run.flush(hold_best=final)  # last.pt in case of an interrupt; best.pt once final
            if final:
                curves = _curves_meanwhile(run, callbacks)  # metrics.csv is final now
                try:
                    finish_run(run, spec, feed, device, callbacks)
                finally:
                    if curves:
                        curves.join()
                run.flush()  # the finished best.pt, written once
            else:  # the next stage starts from this one's best, not its last epoch
                run.model.load_state_dict(dist.on_main(lambda: run.keep_best()["model"]))
            run.stage_index += 1
            # the next stage starts from the run's best score, so best.pt stays the best
            run.state = StageState(best=state.best)
            run.write_last()
    except KeyboardInterrupt:
        run.flush()
        run.log("interrupted; resume with `mobiletune train --resume " + str(run.dir) + "`")
        raise TrainingInterrupted(run.dir) from None
    except Exception:
        with contextlib.suppress(Exception):  # keep what is done; report the first error
            run.flush()
        raise
    for line in take_notices():  # a damaged engine met while scoring, set aside
        callbacks.on_message(line)
    run.log("done")
    return run.dir


def _curves_meanwhile(run: Run, callbacks: Callbacks) -> threading.Thread | None:
    """Draw curves.png (rank 0) in a thread while the run is scored: 0.5 s of matplotlib
    beside decoding and ONNX Runtime, which leave the GIL free. Join it before the end."""
    if not dist.is_main():
        return None
    thread = threading.Thread(target=_draw_curves, args=(run, callbacks), name="curves")
    thread.start()
    return thread


def _draw_curves(run: Run, callbacks: Callbacks) -> None:
    """curves.png beside metrics.csv; a plotting failure must not fail a finished run."""
    if not (run.dir / "metrics.csv").is_file():
        return
    try:
        from mobiletune.evaluation.report import plot_curves

        plot_curves(run.dir / "metrics.csv", run.dir / "curves.png")
    except Exception as e:  # noqa: BLE001 - matplotlib/font problems are not training errors
        run.log(f"could not draw curves.png: {e}")
        callbacks.on_message(f"warning: could not draw curves.png ({e})")


def train(cfg: Config, callbacks: Callbacks | None = None,
          data: ScanResult | None = None) -> Path:
    """The head stage, then the finetune stage if the config has one. Returns the run dir.
    `data`: a split made elsewhere (k-fold), instead of scanning the config's root."""
    callbacks = callbacks or Callbacks()
    device = dist.init(pick_device(cfg.device))
    data = data if data is not None else scan_config(cfg, callbacks)
    torch.manual_seed(cfg.seed)  # the new head's initialization
    model = build_model(cfg.model.arch, cfg.model.weights, len(data.classes), cfg.model.dropout)
    pre = preprocess_spec(cfg.model.arch, cfg.model.weights, cfg.data.image_size)
    return _launch(cfg, data, model, pre, plan(cfg), callbacks, device)


def finetune(source: str | None, cfg_changes: dict[str, Any],
             callbacks: Callbacks | None = None) -> Path:
    """A new run that continues `source` (run dir, checkpoint, or runs/latest) with the
    last N blocks unfrozen. `cfg_changes` maps dotted keys to overrides; one that finetune
    cannot act on (the head stage's epochs and lr, other weights, another split) is refused."""
    from mobiletune.config.load import absolutize, apply_overrides
    from mobiletune.config.schema import NUM_BLOCKS

    callbacks = callbacks or Callbacks()
    parent = load_checkpoint(source)
    parent_dir = Path(parent["path"]).parent
    raw = apply_overrides(parent["config"], list(cfg_changes.items()))
    raw["parent"] = str(parent_dir)
    section = raw.get("finetune")
    if "finetune.unfreeze" not in cfg_changes and isinstance(section, dict) \
            and not section.get("unfreeze"):  # a run without a finetune stage: 3 blocks
        raw["finetune"] = {**section, "unfreeze": FINETUNE_DEFAULT}
    if "name" not in cfg_changes:  # cats -> cats-ft (then cats-ft-2, ...), unless renamed
        raw["name"] = f"{raw.get('name', 'run')}-ft"
    cfg = absolutize(config_from_dict(raw, f"the config stored in {parent['path']}",
                                      cli=cfg_changes))
    if cfg.model.arch != parent["arch"]:
        raise CheckpointError(f"{parent['path']} holds a {parent['arch']} model, not "
                              f"{cfg.model.arch}; drop --arch or start from a matching run.")
    if not cfg.finetune.unfreeze:
        n = NUM_BLOCKS[cfg.model.arch]
        raise ConfigError(f"finetune with unfreeze 0 would train nothing; use --unfreeze 1-{n} "
                          f"(the last N of the {n} blocks of {cfg.model.arch}).",
                          key="finetune.unfreeze", value=0, choices=(1, n))
    same_data = cfg.data.root == parent["config"].get("data", {}).get("root")
    refuse_unhonoured_finetune(cfg, parent, cfg_changes, same_data)
    splits = parent_dir / "splits.csv"
    data = read_splits(splits, parent["class_names"]) if same_data and splits.is_file() \
        else scan_config(cfg)
    if list(data.classes) != list(parent["class_names"]):
        raise CheckpointError(f"{parent['path']} was trained on classes {parent['class_names']}, "
                              f"but {cfg.data.root} holds {data.classes}; finetune needs the same "
                              "classes (train a new run instead).")
    # the child trains from the parent's raw logits; its own temperature is fitted at the end
    model = fold_temperature(model_from_checkpoint(parent), 1.0 / parent.get("temperature", 1.0))
    set_dropout(model, cfg.model.dropout)  # the parent's, unless overridden
    pre = parent["preprocess"]
    if cfg.data.image_size != pre["crop"]:  # trains (and predicts) at the size asked for
        pre = rescale_preprocess(pre, cfg.data.image_size)
    device = dist.init(pick_device(cfg.device))
    return _launch(cfg, data, model, pre, plan(cfg, head=False), callbacks, device)


