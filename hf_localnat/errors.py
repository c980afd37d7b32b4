"""User-facing errors.

Every mistake a user can make (a missing file, a bad column, an unknown option) is raised as
:class:`LocalnatError` with one line saying what is wrong, where, and what to do. The CLI prints
that line and exits non-zero without a traceback; library users can catch it like any ValueError.
"""

from __future__ import annotations


class LocalnatError(ValueError):
    """A user mistake, described in one line: what is wrong, where (file, row, column), and the fix.

    Example:
        >>> raise LocalnatError("data.jsonl row 3, column 'response': expected a string, got int. Fix the row.")
        Traceback (most recent call last):
        ...
        hf_localnat.errors.LocalnatError: data.jsonl row 3, column 'response': expected a string, got int. Fix the row.
    """
