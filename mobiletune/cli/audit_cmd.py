"""`mobiletune audit`: label suspects, pictures filed under two classes, a learning curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mobiletune.cli import common as c
from mobiletune.cli.app import PlainUsage, app, err, guarded, out

AUDIT_EXAMPLES = """Examples:

  mobiletune audit data/cats --arch mobilenet_v2

  mobiletune audit configs/cats.yaml --folds 10 --no-curve

  mobiletune audit labels.csv --weights weights/mobilenet_v2.pth --out audits"""


def _target(target: Optional[str], config: Optional[Path]) -> tuple[Optional[Path], dict]:
    """DATA_OR_CONFIG as (config file, data overrides): a .yaml/.yml is a config, a .csv a
    labels file (data.labels), anything else a data folder (data.root)."""
    from mobiletune.errors import ConfigError

    if target is None:
        return config, {}
    suffix = Path(target).suffix.lower()
    if suffix in (".yaml", ".yml"):
        if config is not None:
            raise ConfigError(f"{target} is a config and so is --config {config}; give one.",
                              key="config", value=target)
        return Path(target), {}
    if suffix == ".csv":
        return config, {"data.labels": str(Path(target).absolute())}
    return config, {"data.root": target}


def _print_results(res: Any, top: int) -> None:
    from rich.table import Table

    from mobiletune.evaluation.suspects import headline

    if res.suspects:
        table = Table(title=f"label suspects (best {min(top, len(res.suspects))} of "
                      f"{len(res.suspects)})", title_justify="left", show_edge=False)
        for col in ("rank", "image", "given", "suggested", "p given", "p suggested", "strength"):
            table.add_column(col, justify="right" if col.startswith(("p ", "rank")) else "left")
        for s in res.suspects[:top]:
            table.add_row(str(s.rank), s.path, s.given, s.suggested, f"{s.p_given:.3f}",
                          f"{s.p_suggested:.3f}", s.strength)
        out.print(table)
    out.print(headline(res.suspects, res.n_images), highlight=False)
    out.print(f"out-of-fold accuracy {res.accuracy:.4f} ({res.k} folds, {res.n_images} images, "
              "each scored by a head that never saw it)", highlight=False)
    for d in res.conflicts[:top]:
        out.print(f"same picture, two classes: {d.a} ({d.a_where}) = {d.b} ({d.b_where})",
                  highlight=False)
    if res.curve is not None:
        out.print(f"learning curve: {res.curve.forecast.sentence()}", highlight=False)
    files = ["suspects.csv", "audit.html", "probabilities.csv", "audit.json"] + \
        (["learning_curve.png", "learning_curve.csv"] if res.curve is not None else [])
    out.print(f"wrote {', '.join(files)} to {res.dir}", highlight=False)


@app.command(cls=PlainUsage, short_help="Find likely label mistakes (out-of-fold heads, confident learning) and draw a learning curve.",
             epilog=AUDIT_EXAMPLES)
@guarded
def audit(
    target: Optional[str] = typer.Argument(None, metavar="DATA_OR_CONFIG", show_default=False, help="a data folder, a labels CSV (path,label[,split]) or a YAML config; without it, --config or the defaults"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", rich_help_panel=c.RUN, help="YAML config file (the same as train's)", show_default=False),
    folds: int = typer.Option(5, "--folds", "-k", rich_help_panel=c.TRAINING, help="folds: each image is scored by a head trained on the other K-1"),
    curve: bool = typer.Option(True, "--curve/--no-curve", rich_help_panel=c.TRAINING, help="also measure a learning curve (10-100% of the training images) and forecast 2x and 4x the photos"),
    seeds: int = typer.Option(3, "--seeds", min=1, max=20, rich_help_panel=c.TRAINING, help="learning-curve repeats (subsets and heads drawn per seed)"),
    top: int = typer.Option(20, "--top", min=0, rich_help_panel=c.OUTPUT, help="suspects listed on the terminal (suspects.csv has them all)"),
    arch: Optional[c.ArchName] = c.Arch, weights: Optional[str] = c.Weights,
    data: Optional[str] = c.Data,
    batch_size: Optional[int] = c.BatchSize, image_size: Optional[int] = c.ImageSize,
    device: Optional[c.DeviceName] = c.Device, seed: Optional[int] = c.Seed,
    out_dir: Optional[str] = c.Out, workers: Optional[str] = c.Workers,
    name: Optional[str] = typer.Option(None, "--name", rich_help_panel=c.OUTPUT, show_default="from config: name", help="the audit folder is <out>/<name>-audit, then -audit-2, ... (never overwritten)"),
    set_: Optional[list[str]] = c.Set, quiet: bool = c.Quiet,
) -> None:
    """Find likely label mistakes: every image is scored by a head trained without it
    (K folds, on cached backbone features), and images another class confidently claims
    are ranked in suspects.csv and audit.html, beside pictures filed under two classes.
    With --curve, a learning curve forecasts what twice and four times the photos give."""
    from mobiletune.cli.render import RichCallbacks
    from mobiletune.config.load import load_config
    from mobiletune.training.audit import audit as run_audit

    cfg_path, target_pairs = _target(target, config)
    pairs = c.common_pairs(arch, weights, data, batch_size, image_size, device, seed, out_dir,
                           workers, name)
    if data is not None and target_pairs:
        from mobiletune.errors import ConfigError

        raise ConfigError(f"{target} and --data {data} both name the data; give one.",
                          key="data.root", value=data)
    pairs.update(target_pairs)
    cfg = load_config(cfg_path, c.overrides(pairs, set_))
    if not cfg.data.cache:
        err.print("note: an audit always reads backbone features through the feature cache "
                  "(data.cache: false applies to train)", highlight=False)
    res = run_audit(cfg, folds, curve, RichCallbacks(quiet), seeds=seeds)
    _print_results(res, top)
