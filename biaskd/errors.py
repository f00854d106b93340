"""The project's own error types.

Every bad input (malformed data file, bad config, missing or corrupt artifact) raises one of
these with a message naming the file/key and what is wrong, so callers and tests can tell a
user error from a bug.
"""


class BiaskdError(Exception):
    """Base class of all errors biaskd raises on purpose."""


class DataFormatError(BiaskdError, ValueError):
    """A data file is malformed (wrong magic number, truncated, bad line, ...)."""


class MissingDataError(BiaskdError, FileNotFoundError):
    """A data file or folder the config asks for is not there (names the path and the key)."""


class ChecksumError(DataFormatError):
    """A downloaded or local file does not match its expected checksum."""


class ConfigError(BiaskdError, ValueError):
    """A configuration is invalid (unknown key, wrong type, out-of-range value)."""


class ArtifactError(BiaskdError):
    """A run dir or a file in it is missing, incomplete or corrupt."""


class TrainingError(BiaskdError, RuntimeError):
    """Training could not continue (e.g. the loss became NaN or infinite)."""


class ArtifactWarning(UserWarning):
    """A run dir (``path``) that a reader left out or read only in part, because a file in it is
    missing or damaged: a sweep's summary turns these into one line each and a failed status."""

    def __init__(self, path, message: str):
        super().__init__(message)
        from pathlib import Path

        self.path = Path(path)


class StorageError(BiaskdError):
    """A file or folder cannot be written: no space left, a read-only file system, no permission
    (names the folder; the run resumes when the same command is run again)."""
