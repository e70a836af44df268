"""The process-wide interrupt flag (Ctrl-C / SIGTERM), checked between training steps."""

from __future__ import annotations

import threading

# Set by the CLI's Ctrl-C / SIGTERM handler, which also raises KeyboardInterrupt. Python
# swallows that exception when it lands in a fork hook or a finalizer (a DataLoader starting
# its workers), so the training loop checks this flag between steps too.
INTERRUPT = threading.Event()
