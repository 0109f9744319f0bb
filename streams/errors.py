"""The error every part of recostream raises for a failure its user can fix."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""
