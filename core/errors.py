"""The few exception types omnitune raises on purpose.

They are raised where the problem is known, with the field, file or line in the message, and
turned into an exit status and one line of text only at the CLI boundary
(:func:`omnitune.core.cli.main`): 2 for usage and configuration errors, 1 for failures
during a run.
"""

from __future__ import annotations


class OmnituneError(Exception):
    """Base class: an expected failure whose message is meant for the user as it is."""

    exit_code = 1


class ConfigError(OmnituneError):
    """A config file, override or option is invalid; the message names the dotted field path."""

    exit_code = 2


class UsageError(OmnituneError):
    """The command line itself is wrong (missing argument, bad override syntax)."""

    exit_code = 2


class DataError(OmnituneError):
    """A dataset cannot be used as given; the message names the file and, where known, the line."""

    exit_code = 1


class MissingDependencyError(OmnituneError):
    """An optional dependency (an install extra) is needed for this command but not installed."""

    exit_code = 2

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"this command needs the '{module}' package: pip install 'omnitune[{extra}]'"
        )
        self.module = module
        self.extra = extra
