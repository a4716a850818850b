"""User-facing errors: each one prints as a single line naming what is wrong and how to fix it."""

from __future__ import annotations


class EstuaryError(Exception):
    """Base of every error the CLI reports as one line (exit code 2), never as a traceback."""

    exit_code = 2


class ConfigError(EstuaryError):
    """A job file or override is invalid: the message names the field and the fix."""


class ModelNotAvailable(EstuaryError):
    """A model spec cannot be resolved offline: the message names the pip command or path to fix it."""


class DataError(EstuaryError):
    """A data set is missing or malformed: the message names the path or setting to fix."""


class RoundFailed(EstuaryError):
    """Too few clients succeeded in a round to meet the configured quorum."""
