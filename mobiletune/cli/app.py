"""The Typer app, the error policy and the consoles: the only place that talks to the terminal.

Exit codes (the contract): 0 success; 2 a user error, one paragraph on stderr, no traceback;
130 interrupted after saving last.pt; 1 only for a genuine bug.
"""

from __future__ import annotations

import functools
import signal
import sys
from typing import Callable

import typer
from rich.console import Console

from mobiletune import __version__
from mobiletune.errors import MobiletuneError, TrainingInterrupted

app = typer.Typer(
    name="mobiletune", no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Adapt a pretrained MobileNet (V2, V3-Small, V3-Large) to your own images.")
out = Console()  # results: tables, JSON
err = Console(stderr=True)  # progress, warnings, errors


def _sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run the same way Ctrl-C does: last.pt, exit 130


def guarded(fn: Callable) -> Callable:
    """Run a command under the error policy: MobiletuneError -> message + exit 2,
    interrupts -> exit 130. Tracebacks are left only for genuine bugs (exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        old = signal.signal(signal.SIGTERM, _sigterm) if _main_thread() else None
        try:
            return fn(*args, **kwargs)
        except MobiletuneError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2) from None
        except TrainingInterrupted as e:
            err.print(f"[yellow]interrupted.[/] last.pt saved; continue with "
                      f"`mobiletune train --resume {e.run_dir}`", highlight=False)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted.[/]")
            raise typer.Exit(130) from None
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)

    return wrapper


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def version_callback(value: bool) -> None:
    if value:
        out.print(f"mobiletune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=version_callback,
                                       is_eager=True, help="Print the version and exit.")) -> None:
    """Adapt a pretrained MobileNet (V2, V3-Small, V3-Large) to your own images."""


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
