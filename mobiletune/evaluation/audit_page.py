"""audit.html: one self-contained page (report.py's style, images as data URIs) with the
headline, the label suspects best first (thumbnail, given and suggested label, both
probabilities), the near-duplicate pairs filed under two classes, and the learning curve."""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from mobiletune.evaluation.report import _CSS, _short, png_uri, thumbnail_uri
from mobiletune.evaluation.suspects import LIKELY, STRONG, counts, headline
from mobiletune.fileio import write_text

# Thumbnails decoded for the page: the best suspects and pairs; the CSV has them all.
MAX_SHOWN = 60

_MORE_CSS = """
.head{font-size:16px;background:#f4f6fa;border-radius:8px;padding:10px 16px;margin:12px 0}
.strong{border-left:5px solid #b00020}.likely{border-left:5px solid #e08a00}
.weak{border-left:5px solid #bbb}.good{color:#1b7a1b;font-weight:600}
.bar{height:6px;background:#eee;border-radius:3px;margin:2px 0}
.bar div{height:6px;border-radius:3px}
"""


def _pic(path: str, uri: str | None) -> str:
    name = html.escape(Path(path).name)
    return f'<img src="{uri}" alt="{name}">' if uri else "<p>(image unreadable)</p>"


def _bar(p: float, color: str) -> str:
    return f'<div class="bar"><div style="width:{p:.0%};background:{color}"></div></div>'


def _suspect_items(suspects, progress) -> str:
    items = []
    shown = suspects[:MAX_SHOWN]
    for n, s in enumerate(shown, 1):
        items.append(
            f'<div class="item {s.strength}">{_pic(s.path, thumbnail_uri(s.path))}'
            f'<div>#{s.rank} &middot; {s.strength} (margin {s.margin:.2f})</div>'
            f'<div>given: <b>{html.escape(s.given)}</b> {s.p_given:.1%}</div>'
            f'{_bar(s.p_given, "#888")}'
            f'<div>suggested: <span class="bad">{html.escape(s.suggested)}</span> '
            f'{s.p_suggested:.1%}</div>{_bar(s.p_suggested, "#b00020")}'
            f'<div class="path">{html.escape(s.path)}</div></div>')
        if progress:
            progress(n, len(shown))
    more = (f"<p>{len(suspects) - len(shown)} more in suspects.csv.</p>"
            if len(suspects) > len(shown) else "")
    return f'<div class="gallery">{"".join(items)}</div>{more}'


def _conflict_items(conflicts) -> str:
    if not conflicts:
        return ("<p class=good>None: no picture is filed under two classes "
                "(check-data's perceptual hash).</p>")
    items = []
    for d in conflicts[:MAX_SHOWN]:
        how = "identical files" if d.match == "exact" else f"near copy, {d.distance} bits apart"
        items.append(
            f'<div class="item strong"><div class="pair">{_pic(d.a, thumbnail_uri(d.a))}'
            f'{_pic(d.b, thumbnail_uri(d.b))}</div><div>{html.escape(d.a_where)} vs '
            f'<b>{html.escape(d.b_where)}</b> ({how})</div><div class="path">'
            f'{html.escape(d.a)}<br>{html.escape(d.b)}</div></div>')
    more = f"<p>{len(conflicts) - MAX_SHOWN} more pairs.</p>" if len(conflicts) > MAX_SHOWN else ""
    return f'<div class="gallery">{"".join(items)}</div>{more}'


def render_audit(result: Any, info: dict[str, Any], curve_png: str | None,
                 progress: Callable[[int, int], None] | None = None) -> str:
    """The page as one HTML string. `result` is training.audit.AuditResult (duck-typed:
    suspects, conflicts, curve, accuracy, n_images, k)."""
    info = {**info, "generated": datetime.now().strftime("%Y-%m-%d %H:%M")}
    meta = " &middot; ".join(f"{html.escape(str(k))}: <b>{html.escape(_short(v))}</b>"
                             for k, v in info.items() if v not in (None, ""))
    c = counts(result.suspects)
    cards = [("out-of-fold accuracy", f"{result.accuracy:.1%}"), ("images", result.n_images),
             ("strong suspects", c["strong"]), ("likely", c["likely"]), ("weak", c["weak"]),
             ("same picture, two classes", len(result.conflicts))]
    cards_html = "".join(f'<div class="card"><div class="v">{v}</div><div class="k">{k}</div>'
                         "</div>" for k, v in cards)
    line = html.escape(headline(result.suspects, result.n_images))
    if result.conflicts:
        line += (f" {len(result.conflicts)} picture(s) are filed under two classes: at least "
                 "one label of each pair is wrong.")
    curve = ""
    if result.curve is not None:
        f = result.curve.forecast
        curve = (f"<h2>Learning curve</h2><p>{html.escape(f.sentence())}</p>"
                 + (f'<img class="plot" src="{curve_png}" alt="learning curve">'
                    if curve_png else "")
                 + f"<p class=meta>Out-of-fold accuracy of heads trained on nested, "
                   f"class-stratified subsets ({', '.join(f'{x:.0%}' for x in result.curve.fractions)}"
                   f" of each fold's training images, {result.curve.seeds} seeds); fit "
                   f"acc(n) = a - b n<sup>-c</sup> with a = {f.law.a:.3f}, c = {f.law.c:.2f}; "
                   f"ranges are {f.level:.0%} bootstrap intervals over seeds and folds.</p>")
    how = (f"Each image is scored by a head trained on the other {result.k - 1} of {result.k} "
           "folds (never on itself). Suspect: another class reaches its own threshold (the "
           "mean probability the model gives that class on images labelled with it) and beats "
           f"the given label; ranked by margin p(suggested) - p(given). Strong: margin >= "
           f"{STRONG}; likely: >= {LIKELY}.")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mobiletune label audit</title>
<style>{_CSS}{_MORE_CSS}</style></head><body>
<h1>mobiletune label audit</h1><div class="meta">{meta}</div>
<div class="head">{line}</div>
<div class="cards">{cards_html}</div>
<h2>Label suspects ({len(result.suspects)}), best first</h2><p class=meta>{html.escape(how)}</p>
{_suspect_items(result.suspects, progress) if result.suspects else
 '<p class=good>No suspects.</p>'}
<h2>Same picture under two classes ({len(result.conflicts)})</h2>
{_conflict_items(result.conflicts)}
{curve}
</body></html>
"""


def write_audit_page(path: str | os.PathLike, result: Any, info: dict[str, Any],
                     progress: Callable[[int, int], None] | None = None) -> Path:
    """Render and write audit.html (the learning curve's PNG embedded when it exists)."""
    path = Path(path)
    png = path.parent / "learning_curve.png"
    return write_text(path, render_audit(result, info, png_uri(png) if png.is_file() else None,
                                         progress))
