"""The exceptions oesir raises on purpose: each carries a one-line message for the user.

Every error a command reports without a traceback derives from `OesirError`,
so the CLI (and any caller of the API) can catch them in one place and tell
them apart by type, never by matching message text.
"""

from __future__ import annotations


class OesirError(Exception):
    """An expected failure with a one-line message fit for the user."""


class StoreError(OesirError, RuntimeError):
    """The index cannot be used as asked (other model, locked, damaged)."""


class DiskFullError(StoreError):
    """A write to the index failed for lack of space; the index keeps its last committed state."""
