"""`train --resume RUN_DIR`: continue an interrupted run from its last.pt, in its own
directory, with the stages, history and optimizer state it had."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobiletune import dist
from mobiletune.config.load import config_from_dict, dump_yaml
from mobiletune.config.overrides import refuse_unhonoured_resume
from mobiletune.data.scan import read_splits
from mobiletune.errors import CheckpointError
from mobiletune.fileio import update_latest, write_text
from mobiletune.model.checkpoint import load_checkpoint, model_from_checkpoint
from mobiletune.training.run import execute, pick_device, scan_config
from mobiletune.training.runstate import Run
from mobiletune.training.stage import Callbacks, EpochResult, StageSpec, state_from_dict


def resume(run_dir: str | Path, callbacks: Callbacks | None = None,
           changes: dict[str, Any] | None = None) -> Path:
    """Continue an interrupted run from its last.pt, in the same directory. `changes` may
    set only device and data.workers; any other override is refused."""
    from mobiletune.config.load import apply_overrides

    callbacks, changes = callbacks or Callbacks(), dict(changes or {})
    refuse_unhonoured_resume(changes, run_dir)
    ckpt = load_checkpoint(run_dir, "last.pt")
    if "resume" not in ckpt:
        raise CheckpointError(f"{ckpt['path']} holds no resume state.")
    source = f"the config stored in {ckpt['path']}"
    stored = config_from_dict(ckpt["config"], source)
    cfg = config_from_dict(apply_overrides(ckpt["config"], list(changes.items())), source,
                           cli=changes)
    device = dist.init(pick_device(cfg.device))  # before anything changes in the run
    splits = Path(ckpt["path"]).parent / "splits.csv"
    data = read_splits(splits, ckpt["class_names"]) if splits.is_file() else scan_config(cfg)
    if list(data.classes) != list(ckpt["class_names"]):  # else labels overrun the head
        raise CheckpointError(f"{ckpt['path']} was trained on classes {ckpt['class_names']}, but "
                              f"{cfg.data.root} now holds {data.classes}; restore the class "
                              "folders to resume, or start a new run.")
    model = model_from_checkpoint(ckpt)
    r = ckpt["resume"]

    run = Run(Path(ckpt["path"]).parent, cfg, data, model, ckpt["preprocess"],
              [StageSpec(**s) for s in r["stages"]], [EpochResult(**h) for h in r["history"]],
              r["stage_index"], state_from_dict(r["state"]), device)
    if run.stage_index >= len(run.stages):
        callbacks.on_message(f"{run.dir} already finished; nothing to resume.")
        return run.dir
    spec = run.stages[run.stage_index]
    where = (f"{spec.name} stage, after epoch {run.state.epochs_done} of "
             f"{'auto' if spec.auto else spec.epochs}")
    callbacks.on_message(f"resuming {run.dir}: {where}")
    run.log(f"resumed at {where}" + "".join(f", {k} = {v}" for k, v in changes.items()))
    if cfg != stored and dist.is_main():  # config.yaml records what runs
        write_text(run.dir / "config.yaml", dump_yaml(cfg))
    for w in data.warnings:
        run.log(f"warning: {w}")
        callbacks.on_message(f"warning: {w}")
    if dist.is_main() and run.history:  # `latest`: the newest run that finished an epoch
        update_latest(run.dir)
    return execute(run, callbacks)
