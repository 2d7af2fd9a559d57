"""The one exception type of the data layer."""

from __future__ import annotations


class DataError(Exception):
    """A dataset file is missing, corrupt, or does not match its manifest.

    The message always names the file (or every directory searched) and what is wrong.
    """
