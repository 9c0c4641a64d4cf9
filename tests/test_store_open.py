"""Choosing a backend from a URL or path: ``store.open_store``."""

from __future__ import annotations

from pathlib import Path

import pytest

from store import open_store
from store.mongodb import MongoStore
from store.sqlite import SqliteStore


@pytest.mark.parametrize(
    ("location", "path"),
    [
        ("var/sigil.db", "var/sigil.db"),
        ("/srv/sigil/sigil.db", "/srv/sigil/sigil.db"),
        ("sqlite:///var/sigil.db", "var/sigil.db"),
        ("sqlite:////srv/sigil/sigil.db", "/srv/sigil/sigil.db"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_paths_and_sqlite_urls_give_the_sqlite_store(location: str, path: str) -> None:
    chosen = open_store(location)

    assert isinstance(chosen, SqliteStore)
    assert repr(chosen) == f"SqliteStore({path!r})"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mongodb://localhost:27017/sigil", "mongodb://localhost:27017"),
        (
            "mongodb+srv://ops:hunter2@cluster.example/sigil?tls=true",
            "mongodb+srv://cluster.example",
        ),
        ("mongodb://u:p%40ss@a:1,b:2/?replicaSet=rs", "mongodb://a:1,b:2"),
    ],
)
def test_mongodb_urls_give_the_mongodb_store_without_credentials_in_repr(
    url: str, shown: str
) -> None:
    chosen = open_store(url, database="signing")
    assert isinstance(chosen, MongoStore)
    assert repr(chosen) == f"MongoStore({shown!r}, database='signing')"


@pytest.mark.parametrize("location", ["", "sqlite:///", "postgres://db/sigil"])
def test_unusable_location_is_refused(location: str) -> None:
    with pytest.raises(ValueError):
        open_store(location)


async def test_store_from_url_opens(tmp_path: Path) -> None:
    chosen = open_store(f"sqlite:///{tmp_path / 'sigil.db'}")
    await chosen.open()
    try:
        await chosen.put_setting("k", "v")
        assert await chosen.get_setting("k") == "v"
    finally:
        await chosen.close()
