"""The one base class for expected errors.

An expected error is bad input or a bad setting that the user can fix: a
command prints its message (which says what to fix) and exits with code 2,
without a traceback. Anything else is a bug and keeps its traceback.
"""


class PretrainError(Exception):
    """An error whose message tells the user what to fix."""
    exit_code = 2


class TrainingError(PretrainError, RuntimeError):
    """A run cannot start or must stop; the message says why and what to do."""


class UsageError(PretrainError):
    """The command line is wrong: a missing, unknown or bad flag or argument."""
