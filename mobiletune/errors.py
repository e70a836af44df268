"""The tool's own exceptions: each is a user error the CLI turns into a message and exit 2."""

from __future__ import annotations

import threading


class MobiletuneError(Exception):
    """A problem the user can fix; the message says what is wrong, where, and what to do."""


class ConfigError(MobiletuneError):
    """A config file or override is missing, malformed, or names an unknown key or bad value."""

    def __init__(self, message: str, *, key: str | None = None, value: object = None,
                 choices: object = None, source: str | None = None) -> None:
        super().__init__(message)
        self.key, self.value, self.choices, self.source = key, value, choices, source


class DataError(MobiletuneError):
    """The data folder is missing, empty, or laid out in a way the tool cannot use."""


class WeightsError(MobiletuneError):
    """Pretrained weights cannot be found, downloaded, or do not fit the architecture."""


class CheckpointError(MobiletuneError):
    """A checkpoint or run directory is missing, truncated, unsafe, or does not fit."""


class MissingExtraError(MobiletuneError):
    """A feature needs an optional extra (`pip install 'mobiletune[tflite]'`) not installed."""

    def __init__(self, feature: str, extra: str, missing: str) -> None:
        super().__init__(f"{feature} needs the optional extra mobiletune[{extra}] ({missing} is "
                         f"not installed): pip install 'mobiletune[{extra}]'")
        self.extra = extra


class TrainingInterrupted(Exception):
    """Training stopped on Ctrl-C or SIGTERM after `last.pt` was saved (exit 130)."""

    def __init__(self, run_dir: object) -> None:
        super().__init__(f"interrupted; progress saved in {run_dir}")
        self.run_dir = run_dir


# Set by the CLI's Ctrl-C / SIGTERM handler, which also raises KeyboardInterrupt. Python
# swallows that exception when it lands in a fork hook or a finalizer (a DataLoader starting
# its workers), so the training loop checks this flag between steps too.
INTERRUPT = threading.Event()
