"""Persistence for the signing backend: one async interface, two backends.

``open_store`` picks the backend from a URL or path; the caller still awaits
``open()`` on the result before using it.
"""

from __future__ import annotations

from datetime import timedelta

from store.base import Store
from store.errors import DuplicateError, StoreBusy, StoreError, StoreUnavailable
from store.models import (
    CSC,
    RP,
    ActivationCode,
    AuditEvent,
    AuditRecord,
    Client,
    Credential,
    Device,
    DeviceStatus,
    RequestState,
    SignatureRequest,
    User,
    UserFactors,
)

__all__ = [
    "CSC",
    "RP",
    "ActivationCode",
    "AuditEvent",
    "AuditRecord",
    "Client",
    "Credential",
    "Device",
    "DeviceStatus",
    "DuplicateError",
    "RequestState",
    "SignatureRequest",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoreUnavailable",
    "User",
    "UserFactors",
    "open_store",
]

_SQLITE_PREFIX = "sqlite:///"


def open_store(
    url_or_path: str,
    *,
    database: str = "sigil",
    finished_retention: timedelta = timedelta(hours=1),
) -> Store:
    """Build the store named by ``url_or_path``; it is not opened yet.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db``,
    ``sqlite:///:memory:`` or a plain filesystem path give the embedded
    SQLite store; ``mongodb://`` and ``mongodb+srv://`` name MongoDB, in
    ``database``, keeping finished requests for ``finished_retention``.
    """
    from store.sqlite import SqliteStore

    if url_or_path.startswith(_SQLITE_PREFIX):
        path = url_or_path[len(_SQLITE_PREFIX) :]
        if not path:
            raise ValueError("sqlite:/// URL names no database file")
        return SqliteStore(path)

    scheme, sep, _ = url_or_path.partition("://")
    if not sep:
        if not url_or_path:
            raise ValueError("empty store location")
        return SqliteStore(url_or_path)

    if scheme in ("mongodb", "mongodb+srv"):
        from store.mongodb import MongoStore

        return MongoStore(
            url_or_path, database=database, finished_retention=finished_retention
        )
    raise ValueError(f"unsupported store URL scheme {scheme!r}")
