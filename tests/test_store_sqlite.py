"""Behaviour of the SQLite backend beyond the shared contract."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import store.sqlite
from store import DuplicateError, RequestState, StoreError, StoreUnavailable
from store._sqlite_schema import SCHEMA_VERSION
from store.audit import verify_chain
from store.sqlite import SqliteStore
from tests.store_contract import CLIENT, T0, USER, make_request, seed


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sigil.db"


@pytest.fixture
async def sqlite_store(db_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(db_path)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def second_store(
    db_path: Path, sqlite_store: SqliteStore
) -> AsyncIterator[SqliteStore]:
    """Another connection to the same file, as a second server process has."""
    opened = SqliteStore(db_path)
    await opened.open()
    yield opened
    await opened.close()


async def raw_query(path: Path, *statements: str) -> list[sqlite3.Row]:
    """Run statements on a connection of its own, behind the store's back."""

    def run() -> list[sqlite3.Row]:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            rows: list[sqlite3.Row] = []
            for sql in statements:
                rows = db.execute(sql).fetchall()
            return rows
        finally:
            db.close()

    return await asyncio.to_thread(run)


async def append(target: SqliteStore, i: int) -> None:
    await target.append_audit(
        time=T0, event="key.used", actor="sam", subject=f"r{i}", outcome="success"
    )


# -- the file -------------------------------------------------------------------
async def test_database_runs_in_wal_mode_with_a_schema_version(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    [[mode]] = await raw_query(db_path, "PRAGMA journal_mode")
    [[version]] = await raw_query(
        db_path, "SELECT value FROM meta WHERE key = 'schema_version'"
    )

    assert mode == "wal"
    assert version == str(SCHEMA_VERSION)


async def test_data_survives_reopening(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    await seed(sqlite_store)
    await sqlite_store.create_request(make_request())
    await sqlite_store.close()

    reopened = SqliteStore(db_path)
    await reopened.open()
    try:
        assert await reopened.get_request("req-1") == make_request()
    finally:
        await reopened.close()


async def test_newer_schema_version_is_refused(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    await sqlite_store.close()
    await raw_query(
        db_path, "UPDATE meta SET value = '99' WHERE key = 'schema_version'"
    )

    with pytest.raises(StoreError, match="schema version 99"):
        await SqliteStore(db_path).open()


async def test_times_are_stored_as_integer_microseconds(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    await seed(sqlite_store)
    await sqlite_store.create_request(make_request())

    [[kind, value]] = await raw_query(
        db_path, "SELECT typeof(expires_at), expires_at FROM requests"
    )

    assert kind == "integer"
    assert value == int(make_request().expires_at.timestamp()) * 10**6 + 123456


async def test_in_memory_database_works() -> None:
    memory = SqliteStore(":memory:")
    await memory.open()
    try:
        await memory.put_setting("k", "v")
        assert await memory.get_setting("k") == "v"
    finally:
        await memory.close()


async def test_unopenable_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        await SqliteStore(tmp_path / "missing-dir" / "x.db").open()


async def test_store_that_is_not_open_is_unavailable(db_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        await SqliteStore(db_path).get_setting("k")


# -- errors ---------------------------------------------------------------------
async def test_dangling_reference_is_a_store_error_not_a_duplicate(
    sqlite_store: SqliteStore,
) -> None:
    with pytest.raises(StoreError) as caught:
        await sqlite_store.create_request(make_request())

    assert not isinstance(caught.value, DuplicateError)
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)


async def test_duplicate_error_does_not_echo_the_key_hash(
    sqlite_store: SqliteStore,
) -> None:
    """SAD-6: the refused value stays out of the error text."""
    await sqlite_store.add_client(CLIENT)

    with pytest.raises(DuplicateError) as caught:
        await sqlite_store.add_client(CLIENT)

    assert CLIENT.api_key_hash not in str(caught.value)


# -- single-use values ------------------------------------------------------------
async def test_use_once_purges_expired_values_now_and_then(
    sqlite_store: SqliteStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store.sqlite, "PURGE_EVERY", 4)
    now = datetime.now(UTC)
    for i in range(3):
        await sqlite_store.use_once("s", f"old-{i}", expires_at=now - timedelta(1))
    await sqlite_store.put_challenge("c", expires_at=now - timedelta(1))
    assert await raw_query(db_path, "SELECT count(*) FROM used_values") == [(3,)]

    await sqlite_store.use_once("s", "live", expires_at=now + timedelta(1))

    assert await raw_query(db_path, "SELECT value FROM used_values") == [("live",)]
    assert await raw_query(db_path, "SELECT count(*) FROM challenges") == [(0,)]


# -- audit (AUD-3) ----------------------------------------------------------------
async def test_audit_rows_refuse_update_and_delete_through_sql(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    """AUD-3: the table is append-only even for direct SQL."""
    await append(sqlite_store, 1)

    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        await raw_query(db_path, "UPDATE audit SET outcome = 'failure'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        await raw_query(db_path, "DELETE FROM audit")


async def test_tampered_audit_row_is_detected(
    sqlite_store: SqliteStore, db_path: Path
) -> None:
    """AUD-3: an edit made behind the store's back breaks the chain."""
    for i in range(5):
        await append(sqlite_store, i)
    assert verify_chain(await sqlite_store.audit_records()).ok

    await raw_query(
        db_path,
        "DROP TRIGGER audit_no_update",
        "UPDATE audit SET outcome = 'failure' WHERE seq = 3",
    )

    result = verify_chain(await sqlite_store.audit_records())
    assert not result.ok
    assert result.first_bad_seq == 3


async def test_two_connections_keep_one_audit_chain(
    sqlite_store: SqliteStore, second_store: SqliteStore
) -> None:
    """AUD-3 across processes: appends from two connections interleave safely."""
    await asyncio.gather(
        *(append(sqlite_store if i % 2 else second_store, i) for i in range(50))
    )

    records = await second_store.audit_records()
    assert [r.seq for r in records] == list(range(1, 51))
    result = verify_chain(records)
    assert result.ok, result.reason


# -- requests across two connections (STATE-1) ----------------------------------
async def test_two_connections_have_one_winning_approval(
    sqlite_store: SqliteStore, second_store: SqliteStore
) -> None:
    """STATE-1 across processes: one of the concurrent moves wins (SAD-4)."""
    await seed(sqlite_store)
    await sqlite_store.create_request(make_request())

    results = await asyncio.gather(
        *(
            (sqlite_store if i % 2 else second_store).transition(
                "req-1",
                from_states=[RequestState.PENDING],
                to_state=RequestState.APPROVED,
                now=T0,
                not_expired=True,
            )
            for i in range(20)
        )
    )

    assert sum(r is not None for r in results) == 1


async def test_two_connections_create_one_idempotent_request(
    sqlite_store: SqliteStore, second_store: SqliteStore
) -> None:
    await seed(sqlite_store)

    results = await asyncio.gather(
        *(
            (sqlite_store if i % 2 else second_store).create_request(
                make_request(f"req-{i}", idempotency_key="k", user_id=USER.user_id)
            )
            for i in range(20)
        )
    )

    assert len({r.request_id for r in results}) == 1
    assert len(await second_store.list_requests()) == 1


async def test_database_of_another_version_is_refused_clearly(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    await raw_query(
        old,
        "CREATE TABLE users (user_id TEXT PRIMARY KEY, display_name TEXT NOT NULL,"
        " key_algorithm TEXT NOT NULL, created_at INTEGER NOT NULL)",
    )

    with pytest.raises(StoreError, match="made by another version"):
        await SqliteStore(old).open()


async def test_database_of_schema_version_1_is_upgraded_in_place(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = SqliteStore(db_path)
    await first.open()
    await seed(first)
    await first.create_request(make_request())
    await first.close()
    # Make the file what version 1 wrote: without the columns of CSC
    # authorisations and second factors.
    await raw_query(
        db_path,
        *(
            f"ALTER TABLE {table} DROP COLUMN {column}"
            for table, column in [
                ("users", "second_factor"),
                ("requests", "kind"),
                ("requests", "num_signatures"),
                ("requests", "used_hashes"),
                ("requests", "signed_hashes"),
                ("requests", "authorized_until"),
            ]
        ),
        "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
    )

    upgraded = SqliteStore(db_path)
    await upgraded.open()
    try:
        request = await upgraded.get_request("req-1")
        user = await upgraded.get_user(USER.user_id)
    finally:
        await upgraded.close()

    assert request is not None and request.kind == "rp"
    assert request.used_hashes == () and request.authorized_until is None
    assert user is not None and user.second_factor == "none"
    assert "upgraded the SQLite store" in caplog.text
    [[version]] = await raw_query(
        db_path, "SELECT value FROM meta WHERE key = 'schema_version'"
    )
    assert version == str(SCHEMA_VERSION)
