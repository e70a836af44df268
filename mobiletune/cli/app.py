"""The Typer app, the error policy and the consoles: the only place that talks to the terminal.

Exit codes (the contract): 0 success; 2 a user error, one paragraph on stderr, no traceback;
130 interrupted after saving last.pt; 1 only for a genuine bug.
"""

from __future__ import annotations

import errno
import functools
import signal
import sys
from typing import Callable

import typer
from rich.console import Console
from rich.markup import escape

from mobiletune import __version__
from mobiletune.errors import INTERRUPT, MobiletuneError, TrainingInterrupted

app = typer.Typer(
    name="mobiletune", no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False, rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Adapt a pretrained MobileNet (V2, V3-Small, V3-Large) to your own images.")
class PlainUsage(typer.core.TyperCommand):
    """Usage lines as users write them: `predict [OPTIONS] PATH...`, not `{PATH}...`."""

    def collect_usage_pieces(self, ctx):
        return [p.replace("{", "").replace("}", "") for p in super().collect_usage_pieces(ctx)]


def _console(stderr: bool = False) -> Console:
    """A console that never hard-wraps what it prints (soft_wrap: a command or a path the
    user must copy stays one line), and that is not 80 columns wide when it writes to a log,
    a pipe or CI (tables keep whole file names there)."""
    console = Console(stderr=stderr, soft_wrap=True)
    if not console.is_terminal:
        console = Console(stderr=stderr, soft_wrap=True, width=LOG_WIDTH)
    return console


LOG_WIDTH = 400  # columns when not a terminal: wide enough for any table row we print
out = _console()  # results: tables, JSON
err = _console(stderr=True)  # progress, warnings, errors


# OS errors that are the user's to fix (a full disk, a read-only or forbidden folder), not bugs
_USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _message(e: Exception) -> str:
    """The error's own message. One re-raised from a DataLoader worker carries the worker's
    traceback; the message is its last line."""
    text = str(e)
    if "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = last.partition(f"{type(e).__name__}: ")[2] or last
    return text


def _on_signal(signum, frame) -> None:
    """Ctrl-C and SIGTERM end a run the same way: last.pt, exit 130."""
    INTERRUPT.set()  # in case the exception below is swallowed (see interrupts.INTERRUPT)
    raise KeyboardInterrupt


def _quiet_interrupts(unraisable) -> None:
    """A KeyboardInterrupt swallowed in a finalizer is handled through INTERRUPT: no
    'Exception ignored' traceback for it. Anything else goes to the default hook."""
    if not issubclass(unraisable.exc_type, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def _install_handlers() -> list[tuple[int, object]]:
    """Our handler for SIGTERM, and for SIGINT unless the caller chose to ignore it
    (`nohup`, a background job). Returns what to restore."""
    if not _main_thread():
        return []
    INTERRUPT.clear()
    old = [(signal.SIGTERM, signal.signal(signal.SIGTERM, _on_signal))]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        old.append((signal.SIGINT, signal.signal(signal.SIGINT, _on_signal)))
    return old


def _worker_rank() -> int:
    """This process's rank under torchrun (0 when launched alone), read without torch."""
    import os

    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0)


def _silence_workers() -> None:
    """Under torchrun only rank 0 talks: the others print no progress and no warnings
    (set once here, not `if rank == 0` through the code)."""
    if _worker_rank() != 0:
        import warnings

        out.quiet = err.quiet = True
        warnings.simplefilter("ignore")


def _print_error(e: MobiletuneError) -> None:
    """One message: rank 0's. Another rank prints only an error of its own (one the ranks
    did not agree on, e.g. a file it alone failed to read), prefixed with its rank."""
    text = escape(_message(e))  # a path like data/[raw]/x.jpg is text, not rich markup
    rank = _worker_rank()
    if rank != 0:
        dist = sys.modules.get("mobiletune.dist")
        # before the group exists every rank meets the same error: rank 0 says it
        if getattr(e, "all_ranks", False) or dist is None or not dist.active():
            return
        text = f"rank {rank}: {text}"
    _console(stderr=True).print(f"[bold red]error:[/] {text}", highlight=False, markup=True,
                               soft_wrap=True)


def _close_group() -> None:
    if "mobiletune.dist" in sys.modules:  # only a command that trained imported it
        sys.modules["mobiletune.dist"].close()


def guarded(fn: Callable) -> Callable:
    """Run a command under the error policy: MobiletuneError -> message + exit 2,
    interrupts -> exit 130. Tracebacks are left only for genuine bugs (exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        old, hook = _install_handlers(), sys.unraisablehook
        sys.unraisablehook = _quiet_interrupts
        _silence_workers()
        try:
            return fn(*args, **kwargs)
        except MobiletuneError as e:
            _print_error(e)
            raise typer.Exit(2) from None
        except OSError as e:
            if e.errno not in _USER_OS_ERRORS:
                raise
            where = escape(f" ({e.filename})") if e.filename else ""
            err.print(f"[bold red]error:[/] {e.strerror}{where}. Files are written whole or "
                      "not at all, so what was saved before is intact; free space or fix the "
                      "permissions, then run again (or `train --resume` the run).",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except TrainingInterrupted as e:
            err.print(f"[yellow]interrupted.[/] last.pt saved; continue with "
                      f"`mobiletune train --resume {escape(str(e.run_dir))}`", highlight=False)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted.[/]")
            raise typer.Exit(130) from None
        finally:
            _close_group()
            sys.unraisablehook = hook
            for signum, handler in old:
                signal.signal(signum, handler)

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
        app(prog_name="mobiletune")  # also under `python -m mobiletune`
    except SystemExit as e:
        _exit_now(e.code)
    except KeyboardInterrupt:
        _exit_now(130)
    _exit_now(0)


def _exit_now(code) -> None:
    """Exit without the interpreter's heap teardown. After torch, torchvision, ONNX Runtime
    and matplotlib are loaded, the final garbage collection and module teardown held the
    process 1.2-3 s after a finished run; the OS frees the memory at once. Exit handlers
    still run and output is flushed, so nothing a normal exit does is lost."""
    import atexit
    import gc
    import os
    import threading

    if code is not None and not isinstance(code, int):  # sys.exit("message"): print it, 1
        print(code, file=sys.stderr)
        code = 1
    for t in threading.enumerate():  # as a normal exit does: wait for non-daemon threads
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    gc.freeze()  # exit handlers below must not trigger a full collection either
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`mobiletune ... | head`)
            pass
    os._exit(code or 0)
