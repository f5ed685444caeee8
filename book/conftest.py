"""pytest settings for running the chapters under nbval (`make nbtest`)."""

import nbval.plugin

_original_init = nbval.plugin.IPyNbCell.__init__


def _patient_init(self, *args, **kwargs):
    _original_init(self, *args, **kwargs)
    # nbval waits only 5 s for a finished cell's output messages; on a busy two-core
    # machine the kernel's progress-bar messages can take longer to arrive.
    self.output_timeout = 60


nbval.plugin.IPyNbCell.__init__ = _patient_init
