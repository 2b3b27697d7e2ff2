"""Errors a user can cause. The CLI prints them on one line and exits with code 2."""


class FvaeError(Exception):
    """Base class of every error caused by input, files or settings rather than a bug."""


class DataError(FvaeError, ValueError):
    """A data source is missing, malformed or not what the command needs."""


class InputError(FvaeError, ValueError):
    """Arrays passed to an estimator have the wrong shape, type or values."""


class ModelFileError(FvaeError):
    """A saved model cannot be read: corrupt, edited, newer format, or another method."""


class OutputExistsError(FvaeError, FileExistsError):
    """An output file exists already and ``force`` was not given."""


class OutputInUseError(FvaeError):
    """Another process is writing the same output now (it holds the output's lock)."""


class TrainingDiverged(FvaeError, ArithmeticError):
    """Training's loss became NaN or infinite before any epoch finished with finite numbers:
    there are no weights worth keeping. A lower learning rate usually cures it."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C) after at least one finished epoch.

    The estimator is left fitted with the weights training kept, as early stopping would leave
    it, so a caller can still save it; a caller that does not catch this sees the interrupt.
    """
