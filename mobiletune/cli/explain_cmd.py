"""`mobiletune explain`: Grad-CAM overlays showing where the model looked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from mobiletune.cli.app import PlainUsage, app, err, guarded, out


def _free_png(folder: Path, stem: str, taken: set[str]) -> Path:
    """`<stem>.cam.png` in `folder`, or `<stem>-2.cam.png` ...: never an existing file."""
    for i in range(1, 100000):
        name = f"{stem}.cam.png" if i == 1 else f"{stem}-{i}.cam.png"
        if name not in taken and not (folder / name).exists():
            taken.add(name)
            return folder / name
    raise FileExistsError(folder / f"{stem}.cam.png")


@app.command(cls=PlainUsage, short_help="Grad-CAM heat maps: which parts of each image the prediction rests on.", epilog="""Examples:

  mobiletune explain photo.jpg                         (overlays in a new runs/latest/explain)

  mobiletune explain shots/ --class bees --json --checkpoint runs/cats""")
@guarded
def explain(
    paths: list[str] = typer.Argument(..., metavar="PATH", help="image files, folders (recursive) or globs"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "--from", show_default="runs/latest/best.pt", help="run directory or .pt checkpoint"),
    out_dir: Optional[str] = typer.Option(None, "--out", show_default="a new <run>/explain, explain-2, ...", help="folder for the overlay PNGs"),
    class_name: Optional[str] = typer.Option(None, "--class", help="explain this class instead of each image's predicted class"),
    as_json: bool = typer.Option(False, "--json", help='one JSON object per image: {"path", "label", "score", "class", "cam", "overlay"}, cam in [0, 1]'),
) -> None:
    """Grad-CAM heat maps: which parts of each image made the model decide. Writes one
    overlay PNG per image (same aspect as the input; the parts outside the center crop the
    model sees are dimmed). Exit 2 when any input could not be read."""
    from rich.progress import Progress

    from mobiletune.evaluation.explain import Explainer
    from mobiletune.fileio import atomic_write, find_run, new_run_dir
    from mobiletune.predict.predictor import expand_inputs, require_some

    files = expand_inputs(paths)
    explainer = Explainer.from_checkpoint(checkpoint)
    target = explainer.target(class_name)  # a bad --class fails before any work
    run = None if out_dir else find_run(checkpoint)
    folder: Path | None = None  # made with the first overlay: a failed call leaves nothing
    taken: set[str] = set()
    results = []
    with Progress(console=err, transient=True, disable=len(files) < 4) as bar:
        task = bar.add_task("explaining", total=len(files))
        for f in files:
            r = explainer.explain_one(f, target)
            png = None
            if r.error is None:
                folder = folder or (Path(out_dir) if out_dir else new_run_dir(run, "explain"))
                png = _free_png(folder, Path(f).stem, taken)
                atomic_write(png, lambda fh, r=r: r.overlay().save(fh, "PNG"))
            results.append((r, png))
            bar.advance(task)
    require_some([r for r, _ in results])
    for r, png in results:
        if as_json:
            print(json.dumps({**r.to_json(), **({"overlay": str(png)} if png else {})},
                             ensure_ascii=False))
        elif r.error:
            out.print(f"{escape(r.path)}: [red]error[/] {escape(r.error)}", highlight=False)
        else:
            out.print(f"{escape(r.path)}: {escape(r.label)} {r.score:.3f}; map for "
                      f"{escape(r.explained)} -> {escape(str(png))}", highlight=False)
    bad = [r for r, _ in results if r.error]
    if bad:
        err.print(f"[bold red]error:[/] {len(bad)} of {len(results)} input(s) could not be "
                  f"read (first: {escape(str(bad[0].path))}: {escape(bad[0].error)}).",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(2)
