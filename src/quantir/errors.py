"""One error family with one-line messages: the CLI prints ``error: <message>`` and exits non-zero."""


class QuantirError(Exception):
    """Base class; ``str(err)`` is a single line meant for the user."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ImageError(QuantirError):
    """A photo could not be read or written."""


class ConfigError(QuantirError):
    """A config file or value is invalid."""


class DataError(QuantirError):
    """A dataset folder is missing, empty or inconsistent, or a download failed."""


class OutputError(QuantirError):
    """An output file cannot be written (folder missing or read-only, disk full, name collision)."""


class ModelFileError(QuantirError):
    """A model file is missing, corrupt, or made for another task or scale."""


class TrainingError(QuantirError):
    """A training run cannot go on (diverged, or its run folder is not resumable)."""

    exit_code = 3


def require(cond: bool, message: str) -> None:
    """Validation helper for ``__post_init__``: raise a one-line ConfigError when ``cond`` fails."""
    if not cond:
        raise ConfigError(message)
