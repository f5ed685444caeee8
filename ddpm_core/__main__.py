"""``python -m ddpm_core``: see ``ddpm_core.cli``."""

import sys

from ddpm_core.cli import main

sys.exit(main())
