"""The one exception type this package raises for input it cannot use.

Its message is a short paragraph that says what was wrong and how to fix it;
the command line prints it without a traceback and exits with status 2.
"""


class DDPMError(ValueError):
    """Raised for bad input: wrong arguments, missing data, unusable checkpoints."""
