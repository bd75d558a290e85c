"""Errors that a user can act on: each names the file, row and column (or field) at fault."""

from __future__ import annotations


class MMRankError(Exception):
    """Base class for errors the CLI prints as one line and exits with code 2."""


class DataError(MMRankError):
    """Bad input data. ``str(err)`` is one line: ``FILE: row R, column 'C': what is wrong``."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 column: str | None = None) -> None:
        self.file, self.row, self.column, self.detail = file, row, column, message
        where = []
        if file is not None:
            where.append(str(file))
        loc = []
        if row is not None:
            loc.append(f"row {row}")
        if column is not None:
            loc.append(f"column '{column}'")
        head = ": ".join(p for p in [", ".join(where), ", ".join(loc)] if p)
        super().__init__(f"{head}: {message}" if head else message)


class ConfigError(MMRankError):
    """A config file or flag with an unknown or mistyped key."""
