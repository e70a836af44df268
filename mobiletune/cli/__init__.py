"""Command-line interface. Each command lives in its own module and registers on `app`;
none imports torch at module level, so `--help` answers instantly."""

from mobiletune.cli.app import app, main  # noqa: F401
from mobiletune.cli import train_cmd  # noqa: F401,E402
from mobiletune.cli import predict_cmd  # noqa: F401,E402
from mobiletune.cli import evaluate_cmd  # noqa: F401,E402
from mobiletune.cli import checkdata_cmd  # noqa: F401,E402
from mobiletune.cli import profile_cmd  # noqa: F401,E402
from mobiletune.cli import export_cmd  # noqa: F401,E402
from mobiletune.cli import explain_cmd  # noqa: F401,E402
