"""What `finetune.lr: auto` should be: constant rates under stop rules against annealed runs.

    .venv/bin/python benchmarks/sweep_finetune_lr.py [--work DIR] [--sets produce hymenoptera]
        [--seeds 0 1 2 3 4]

Per data set and seed, from one head-only parent (`train`, defaults), `finetune --unfreeze 3`:
- at 1e-5, 3e-5, 1e-4 and 3e-4, constant, for the auto rule's whole cap (20 epochs, patience
  off). A constant-rate run's epochs do not depend on when it stops, so its metrics.csv is
  the trajectory every stop rule cuts: patience 3 (what a number for `--lr` gets), patience 2,
  and the former `lr: auto`, a two-epoch race of 1e-4 and 3e-4 whose winner goes on (judged
  here by the lower best val loss: per-image losses are not in metrics.csv);
- at 1e-4 and 3e-4 annealed (cosine) over 3 and 4 epochs (`--epochs 3|4`).
Each policy's selected epoch is the one a run selects (lowest val loss, 0.1% gain; epoch 0,
the parent, until beaten). The table gives its val accuracy and the epochs it trained, mean
over seeds, and the epochs as a ratio of `--lr 1e-5`'s. Runs are kept in `--work` (reused by
a second call: the full sweep is ~25 minutes on 2 cores). Data: ../shared's grocery_produce
and hymenoptera; offline MobileNetV2 weights.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from mobiletune.training.stage import AUTO_FINETUNE, is_gain

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_flow import ROOT, SETS, WEIGHTS, _run  # noqa: E402  (benchmarks/ is sys.path[0])

CONSTANT = ("1e-5", "3e-5", "1e-4", "3e-4")
ANNEALED = (("1e-4", 3), ("1e-4", 4), ("3e-4", 3), ("3e-4", 4))
CAP = AUTO_FINETUNE["cap"]  # the constant runs train all of it (patience off)

Trajectory = list[tuple[float, float]]  # (val loss, val acc) of epochs 0..n


def _finetune(work: Path, parent: str, name: str, args: list[str]) -> Trajectory:
    run = work / "runs" / name
    if not (run / "best.pt").is_file():
        _run(ROOT, work, ["finetune", "--from", str(work / "runs" / parent), "--unfreeze", "3",
                          "-q", "--name", name, *args])
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["stage"] == "finetune"]
    return [(float(r["val_loss"]), float(r["val_acc"])) for r in rows]


def trajectories(work: Path, data: Path, seed: int) -> dict[str, Trajectory]:
    """Every run of one seed, by policy-table key ("1e-4" constant, "3e-4 cos3" annealed)."""
    parent = f"p-{data.name}-{seed}"
    if not (work / "runs" / parent / "best.pt").is_file():
        _run(ROOT, work, ["train", "--data", str(data), "--arch", "mobilenet_v2", "--weights",
                          str(WEIGHTS), "--name", parent, "-q", "--set", f"seed={seed}"])
    out = {r: _finetune(work, parent, f"ft-{data.name}-{seed}-{r}",
                        ["--lr", r, "--set", "train.patience=50"]) for r in CONSTANT}
    for r, e in ANNEALED:
        out[f"{r} cos{e}"] = _finetune(work, parent, f"cos-{data.name}-{seed}-{r}-{e}",
                                       ["--lr", r, "--epochs", str(e)])
    assert all(len(out[r]) == CAP + 1 for r in CONSTANT), "a constant run stopped early"
    return out


def stop(t: Trajectory, patience: int | None) -> tuple[int, int]:
    """(epochs trained, selected epoch) of `t` cut by `patience` (None: all of it)."""
    best, stale = 0, 0
    for e in range(1, len(t)):
        if patience is not None and stale >= patience:
            return e - 1, best
        if is_gain(t[e][0], t[best][0]):  # the rule fit_stage applies
            best, stale = e, 0
        else:
            stale += 1
    return len(t) - 1, best


def race(runs: dict[str, Trajectory]) -> tuple[int, int, str]:
    """The former auto: 1e-4 and 3e-4 train two epochs each, the lower best val loss goes on
    under patience 3; the loser's two epochs are extra."""
    best = {r: min(runs[r][1][0], runs[r][2][0]) for r in ("1e-4", "3e-4")}
    win = min(best, key=best.get)
    n, sel = stop(runs[win], 3)
    return max(n, 2) + 2, sel, win


def policies() -> dict[str, Callable[[dict], tuple[int, int, str]]]:
    """name -> (runs of one seed -> (epochs trained, selected epoch, trajectory key))."""
    out: dict[str, Callable] = {}
    for r in CONSTANT:
        for p in (3, 2):
            out[f"{r}, patience {p}"] = lambda runs, r=r, p=p: (*stop(runs[r], p), r)
    out["race 1e-4 / 3e-4, patience 3"] = race
    for r, e in ANNEALED:
        key = f"{r} cos{e}"
        out[f"{r} annealed over {e}"] = lambda runs, key=key: (*stop(runs[key], None), key)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/sweep_finetune_lr"))
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    args.work.mkdir(parents=True, exist_ok=True)
    con = Console(width=160)
    for name in args.sets:
        per_seed = [trajectories(args.work, SETS[name], s) for s in args.seeds]
        t = Table(title=f"{name}: finetune --unfreeze 3 from head-only parents, seeds "
                        f"{args.seeds}")
        for col in ("policy", "val acc (mean)", "per seed", "epochs (mean)", "vs 1e-5, p3"):
            t.add_column(col, justify="left" if col == "policy" else "right")
        base = statistics.mean(stop(r["1e-5"], 3)[0] for r in per_seed)
        for policy, f in policies().items():
            res = [(f(runs), runs) for runs in per_seed]
            accs = [runs[key][sel][1] for (_, sel, key), runs in res]
            epochs = statistics.mean(n for (n, _, _), _ in res)
            t.add_row(policy, f"{statistics.mean(accs):.4f}", " ".join(f"{a:.3f}" for a in accs),
                      f"{epochs:.1f}", f"{epochs / base:.2f}x")
        con.print(t)


if __name__ == "__main__":
    main()
