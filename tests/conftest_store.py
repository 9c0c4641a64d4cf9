"""The ``store`` fixture: one opened store per backend, on a fresh database.

Every test that takes ``store`` runs once per entry of ``params`` (STATE-2).
A backend joins by adding a factory to ``STORE_FACTORIES`` and its name to
``params``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from store import Store
from store.sqlite import SqliteStore

StoreFactory = Callable[[Path], AbstractAsyncContextManager[Store]]


@asynccontextmanager
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = SqliteStore(tmp_path / "store.db")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


STORE_FACTORIES: dict[str, StoreFactory] = {
    "sqlite": sqlite_store,
}


@pytest.fixture(params=["sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    factory = STORE_FACTORIES[request.param]
    async with factory(tmp_path) as opened:
        yield opened
