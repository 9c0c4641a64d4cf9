"""The ``store`` fixture: one opened store per backend, on a fresh database.

Every test that takes ``store`` runs once per backend in ``BACKENDS``
(STATE-2): the embedded SQLite store on a file in ``tmp_path``, and the
MongoDB store on a database of its own in the session's MongoDB server
(FerretDB built from source, or the server ``MONGODB_URI`` names; see
tests/conftest_mongo.py). ``open_backend`` gives the same choice to fixtures
that build more than a store, such as the running server of
tests/conftest_server.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from store import Store
from store.mongodb import MongoStore
from store.sqlite import SqliteStore

BACKENDS = ["sqlite", "mongodb"]


@dataclass(frozen=True)
class Backend:
    """A store backend a test runs on; ``uri`` names the MongoDB server."""

    name: str
    uri: str | None = None


def resolve_backend(request: pytest.FixtureRequest, name: str) -> Backend:
    """Call from a sync fixture: starting the session's MongoDB server there
    keeps that blocking work off the event loop."""
    if name == "mongodb":
        return Backend(name, request.getfixturevalue("mongodb_server").uri)
    return Backend(name)


@asynccontextmanager
async def open_backend(backend: Backend, tmp_path: Path) -> AsyncIterator[Store]:
    """Open a fresh, empty store of ``backend``; close it after."""
    name = backend.name
    if name == "sqlite":
        sqlite = SqliteStore(tmp_path / "sigil.db")
        await sqlite.open()
        try:
            yield sqlite
        finally:
            await sqlite.close()
        return

    if name == "mongodb" and backend.uri is not None:
        mongo = MongoStore(backend.uri, database=f"sigil_test_{uuid.uuid4().hex[:12]}")
        await mongo.open()
        try:
            yield mongo
        finally:
            try:
                await mongo.drop_database()
            finally:
                await mongo.close()
        return

    raise ValueError(f"no store backend {name!r}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return resolve_backend(request, request.param)


@pytest.fixture
async def store(backend: Backend, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_backend(backend, tmp_path) as opened:
        yield opened
