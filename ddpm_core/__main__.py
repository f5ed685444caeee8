"""``python -m ddpm_core``: see ``ddpm_core.app.cli``."""

import os
import signal
import sys

from ddpm_core.app.cli import EXIT_INTERRUPTED, main

status = main()
if status == EXIT_INTERRUPTED:
    # Ctrl-C was handled and reported. Leave at once, ignoring further interrupts: a second one, or
    # one still pending in a library's thread, would otherwise end the interpreter's shutdown with
    # SIGINT instead of this status. Checkpoints are written atomically and the kernel frees the lock.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
sys.exit(status)
