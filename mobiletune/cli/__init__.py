"""Command-line interface. Each command lives in its own module and registers on `app`;
none imports torch at module level, so `--help` answers instantly."""

from mobiletune.cli import (
    audit_cmd,  # noqa: F401,E402
    checkdata_cmd,  # noqa: F401,E402
    evaluate_cmd,  # noqa: F401,E402
    explain_cmd,  # noqa: F401,E402
    export_cmd,  # noqa: F401,E402
    predict_cmd,  # noqa: F401,E402
    profile_cmd,  # noqa: F401,E402
    train_cmd,  # noqa: F401,E402
)
from mobiletune.cli.app import app, main  # noqa: F401
