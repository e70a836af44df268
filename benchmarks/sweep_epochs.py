"""Choose the head stage's stopping rule by measurement: per-epoch val logits of long runs.

    .venv/bin/python benchmarks/sweep_epochs.py [--seeds 0 1 2 3 4] [--cap 150] [--out F.json]

For each data set (../shared hymenoptera and the small flat subset bench_accuracy.py cuts
from it) and seed, trains the head on the cached features for `--cap` epochs, once with a
constant learning rate and once with cosine decay over the cap, recording every epoch's val
logits. `--analyse F.json` then replays every (criterion, patience, cap) rule offline with
held-out selection: the rule picks its epoch on one half of val and is scored on the other
half (and vice versa), so a noisy criterion cannot flatter itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_accuracy import DATASETS, base_overrides  # noqa: E402


def _record(cfg, schedule: str) -> list[list[list[float]]]:
    """Val logits after each epoch of one long head run on cached features."""
    from mobiletune.data.scan import scan
    from mobiletune.frozen.feeds import FeedSpec, make_feed
    from mobiletune.model.backbone import build_model, preprocess_spec, split
    from mobiletune.training.stage import Callbacks, StageSpec, StageState, fit_stage

    data = scan(cfg.data.root, cfg.data.val_split, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.arch, cfg.model.weights, len(data.classes), cfg.model.dropout)
    pre = preprocess_spec(cfg.model.arch, cfg.model.weights, cfg.data.image_size)
    feed = make_feed(FeedSpec.of(cfg), data, pre, model, 0, torch.device("cpu"), Callbacks())
    _, tail = split(model, 0)
    logits: list = []

    def save(state, improved):
        tail.eval()
        with torch.no_grad():
            logits.append(torch.cat([tail(x.float()) for x, _ in feed.val_batches()]).tolist())

    spec = StageSpec("head", 0, cfg.train.epochs, cfg.train.lr, cfg.train.weight_decay, 0.0, 0,
                     schedule=schedule)
    fit_stage(model, spec, feed, seed=cfg.seed, device=torch.device("cpu"), state=StageState(),
              save=save, callbacks=Callbacks())
    return {"logits": logits, "labels": feed.val_labels.tolist()}


def record(seeds: list[int], cap: int, cosine_caps: list[int], out: Path) -> None:
    from mobiletune.config.load import load_config

    results = json.loads(out.read_text()) if out.is_file() else {}
    for name, make in DATASETS.items():
        root = make()
        for seed in seeds:
            for schedule, epochs in [("constant", cap)] + [("cosine", c) for c in cosine_caps]:
                key = f"{name}|{seed}|{schedule}|{epochs}"
                if key in results:
                    continue
                cfg = load_config(None, base_overrides(root, name) + [
                    ("seed", seed), ("train.epochs", epochs)])
                results[key] = _record(cfg, schedule)
                out.write_text(json.dumps(results))
                print(key, flush=True)


def _nll_acc(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean()), \
        float((logits.argmax(1) == labels).mean())


def _pick(scores: list[tuple[float, float]], criterion: str, patience: int,
          cap: int) -> tuple[int, int]:
    """(selected epoch index, epochs run) of a rule; `scores` are (loss, acc) per epoch."""
    best, stale, e = 0, 0, 0
    for e in range(1, min(cap, len(scores))):
        (loss, acc), (bl, ba) = scores[e], scores[best]
        if criterion == "loss":
            better = gain = loss < bl * (1 - 1e-3)
        else:
            better, gain = (acc, -loss) > (ba, -bl), acc > ba
        best = e if better else best
        stale = 0 if gain else stale + 1
        if patience and stale >= patience:
            break
    return best, e + 1


def analyse(path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    results = json.loads(path.read_text())
    rules = [(c, p, cap) for c in ("loss", "acc") for p in (3, 5, 10, 20, 0)
             for cap in (30, 60, 100, 150)]
    rows: dict = {}
    for key, r in results.items():
        name, seed, schedule, long_cap = key.split("|")
        logits, labels = np.array(r["logits"]), np.array(r["labels"])
        rng = np.random.default_rng(int(seed))
        order = rng.permutation(len(labels))
        halves = [order[: len(order) // 2], order[len(order) // 2:]]
        for c, p, cap in rules:
            if schedule == "cosine" and cap != int(long_cap):
                continue  # a cosine run's trajectory depends on its cap
            accs, epochs = [], []
            for a, b in (halves, halves[::-1]):
                scores = [_nll_acc(lg[a], labels[a]) for lg in logits]
                e, ran = _pick(scores, c, p, cap)
                accs.append(_nll_acc(logits[e][b], labels[b])[1])
                epochs.append(ran)
            full_e, _ = _pick([_nll_acc(lg, labels) for lg in logits], c, p, cap)
            rows.setdefault((name, schedule, c, p, cap), []).append(
                (float(np.mean(accs)), float(np.mean(epochs)),
                 _nll_acc(logits[full_e], labels)[1]))
    table = Table(title="held-out accuracy of the selected epoch (select on one half of val, "
                        "score on the other), mean over seeds")
    for col in ("set", "schedule", "criterion", "patience", "cap", "held-out acc", "min",
                "epochs run", "val acc (all)"):
        table.add_column(col, justify="right")
    for (name, schedule, c, p, cap), v in sorted(rows.items()):
        a = np.array(v)
        table.add_row(name, schedule, c, str(p or "off"), str(cap), f"{a[:, 0].mean():.4f}",
                      f"{a[:, 0].min():.4f}", f"{a[:, 1].mean():.1f}", f"{a[:, 2].mean():.4f}")
    Console(width=160).print(table)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--cap", type=int, default=150)
    ap.add_argument("--cosine-caps", type=int, nargs="+", default=[30, 60, 150])
    ap.add_argument("--out", type=Path, default=Path("sweep_epochs.json"))
    ap.add_argument("--analyse", action="store_true")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    if not args.analyse:
        record(args.seeds, args.cap, args.cosine_caps, args.out)
    analyse(args.out)


if __name__ == "__main__":
    main()
