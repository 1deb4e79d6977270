"""Exception types shared across fewshot and episodes.

Every message follows "what was expected, what came, how to fix it". The CLI turns these into one-line
messages and exit code 2 (user input) instead of tracebacks.
"""

__all__ = ["FewshotError", "ConfigError", "DataError", "StorageError", "UnknownNameError"]


class FewshotError(Exception):
    """Base class for errors caused by user input (bad config, missing data, unknown name)."""


class ConfigError(FewshotError, ValueError):
    """A configuration value or key is invalid. The message names the key."""


class DataError(FewshotError, ValueError):
    """A dataset, split file, cache or episode file is missing, corrupt or inconsistent."""


class StorageError(FewshotError, OSError):
    """The operating system refused a read or write (disk full, read-only folder, quota, permissions).

    The message names the file or folder, says what was kept intact and how to continue.
    """


class UnknownNameError(FewshotError, KeyError):
    """A name is not in a registry. Unlike a bare KeyError, ``str()`` gives the readable message."""

    def __str__(self) -> str:  # KeyError.__str__ would repr() the message
        return str(self.args[0]) if self.args else ""
