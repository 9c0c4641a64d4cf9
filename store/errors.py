"""Errors raised by store backends."""

from __future__ import annotations

__all__ = ["DuplicateError", "StoreBusy", "StoreError", "StoreUnavailable"]


class StoreError(Exception):
    """Root of every store error."""


class DuplicateError(StoreError):
    """A record with the same identity already exists."""


class StoreUnavailable(StoreError):
    """The backing database cannot be reached right now."""


class StoreBusy(StoreUnavailable):
    """A record stayed in another process's hands too long; try again."""
