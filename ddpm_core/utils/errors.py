"""The exception types this package raises for input it cannot use or a run it cannot finish.

Each message is a short paragraph that says what was wrong and how to fix it;
the command line prints it without a traceback and exits with the error's
``exit_code``: 2 for unusable input, 1 for a model that produced unusable output.
"""


class DDPMError(ValueError):
    """Raised for bad input: wrong arguments, missing data, unusable checkpoints."""

    exit_code = 2


class NonFiniteOutputError(DDPMError):
    """Raised when a model produces NaN or inf values; nothing derived from them is written."""

    exit_code = 1


class DiskFullError(DDPMError):
    """Raised when a file could not be written for lack of space; the file it replaces is intact."""

    def __init__(self, message: str, path: str, needed_bytes: int) -> None:
        super().__init__(message)
        self.path = path
        self.needed_bytes = needed_bytes
