"""`mobiletune check-data`: counts, broken and tiny files, imbalance, train/val duplicates.

Exit 0 when the folder is clean, 1 when it finds a problem, 2 on a user error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mobiletune.cli.app import PlainUsage, app, err, guarded, out


def _counts_table(report: Any) -> Any:
    from rich.table import Table

    splits = list(report.counts)
    table = Table(show_edge=False)
    table.add_column("class")
    for s in splits:
        table.add_column(s, justify="right")
    for c in report.classes:
        table.add_row(c, *(str(report.counts[s].get(c, "-")) for s in splits))
    table.add_row("[bold]total[/]", *(str(sum(report.counts[s].values())) for s in splits))
    return table


def _print_findings(report: Any) -> None:
    for issue in report.layout_issues:
        out.print(f"[red]layout:[/] {issue}", highlight=False)
    for path, why in report.unreadable:
        out.print(f"[red]unreadable:[/] {path}: {why}", highlight=False)
    for path, w, h in report.tiny:
        out.print(f"[red]tiny:[/] {path} is {w}x{h} px (under "
                  f"{report.settings['min_size']} px on its short side)", highlight=False)
    for x in report.imbalance:
        ratio = f"{x['ratio']:.1f}x" if x["ratio"] else "one class is empty"
        out.print(f"[red]imbalance:[/] {x['split']}: {x['largest']} has {x['largest_count']} "
                  f"images, {x['smallest']} {x['smallest_count']} ({ratio}); consider "
                  "data.balance: weights or sampler", highlight=False)
    labels = {"leak": "train/val leak", "label_conflict": "same image, two classes",
              "duplicate": "duplicate"}
    for d in report.duplicates:
        how = "identical files" if d.match == "exact" else f"near copy, {d.distance} bits apart"
        out.print(f"[red]{labels[d.kind]}:[/] {d.b} ({d.b_where}) = {d.a} ({d.a_where}), {how}",
                  highlight=False)
    if report.ignored:
        out.print(f"[yellow]ignored {len(report.ignored)} file(s) that are not images, e.g. "
                  f"{report.ignored[0][0]}[/]", highlight=False)


@app.command("check-data", cls=PlainUsage, short_help="Check a data folder before training: counts, unreadable and tiny files, imbalance, duplicates.", epilog="""Examples:

  mobiletune check-data data/cats

  mobiletune check-data data/cats --json --max-distance 4""")
@guarded
def check_data(
    folder: str = typer.Argument(..., metavar="DIR", help="data root: DIR/train/<class> + DIR/val/<class>, or DIR/<class>; or a labels CSV (path,label[,split])"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of tables"),
    min_size: int = typer.Option(64, "--min-size", min=1, help="flag images whose shorter side is under this many pixels"),
    max_imbalance: float = typer.Option(3.0, "--max-imbalance", min=1.0, help="flag a split whose largest class has more than this many times the images of its smallest"),
    max_distance: int = typer.Option(6, "--max-distance", min=0, max=32, help="perceptual-hash bits two images may differ by and still count as copies (copies: 0-4, distinct photos: ~32)"),
) -> None:
    """Check a data folder before training: counts, unreadable and tiny files, class
    imbalance, and duplicate images across train and val (exit 1 when anything is found)."""
    from rich.progress import Progress

    from mobiletune.data.checkdata import check_data as run_check

    with Progress(console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task("reading images", total=None)
        report = run_check(Path(folder), min_size=min_size, max_imbalance=max_imbalance,
                           max_distance=max_distance,
                           progress=lambda n, total: bar.update(task, completed=n, total=total))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        out.print(f"[bold]{report.root}[/] ({report.layout} layout)", highlight=False)
        out.print(_counts_table(report))
        _print_findings(report)
        if report.problems:
            out.print(f"[bold red]problems:[/] {'; '.join(report.problems)}", highlight=False)
        else:
            out.print("[bold green]clean:[/] no problems found", highlight=False)
    if report.problems:
        raise typer.Exit(1)
