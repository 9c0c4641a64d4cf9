"""What only the MongoDB store has to prove: a chain, moves and single use
kept right across processes without transactions (and on FerretDB, whose
conditional updates are not atomic), moves that never lose their audit
record, and the features each server lacks named out loud.

Several ``MongoStore`` objects on one database stand for several server
processes: each has its own client and connection pool, as a process would.
The shared contract (tests/store_contract.py) runs on this backend too.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from server.cli import configure_logging
from store import (
    ActivationCode,
    AuditEvent,
    DuplicateError,
    RequestState,
    StoreBusy,
    StoreError,
    StoreUnavailable,
    UserFactors,
)
from store.audit import verify_chain
from store.models import CSC
from store.mongodb import MOVE_GRACE, MongoStore
from tests.store_contract import USER, make_request, seed

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def database() -> str:
    return f"sigil_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def stores(
    mongodb_server: Any, database: str
) -> AsyncIterator[tuple[MongoStore, MongoStore]]:
    """Two stores on one database, as two server processes would have."""
    first = MongoStore(mongodb_server.uri, database=database)
    second = MongoStore(mongodb_server.uri, database=database)
    await first.open()
    await second.open()
    try:
        yield first, second
    finally:
        await second.close()
        await first.drop_database()
        await first.close()


@pytest.fixture
async def raw(mongodb_server: Any, database: str) -> AsyncIterator[Any]:
    """The same database through a bare client, to see or break what is stored."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_server.uri)
    try:
        yield client[database]
    finally:
        await client.close()


class OutageAfterClaim(MongoStore):
    """A fake for failures that cannot be provoked on time otherwise: the
    database goes away right after a move is claimed, before the request is
    written (``stage="write"``) or before the audit append (``"audit"``)."""

    def __init__(self, *args: Any, stage: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage = stage

    def _col(self, name: str) -> Any:
        collection = super()._col(name)
        if self.stage == "write" and name == "requests":
            return _FailingWrites(collection)
        return collection

    async def _finish_move(self, move: dict[str, Any]) -> None:
        if self.stage == "audit":
            raise StoreUnavailable("MongoDB: AutoReconnect")
        await super()._finish_move(move)


class _FailingWrites:
    def __init__(self, collection: Any) -> None:
        self._collection = collection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    async def find_one_and_update(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("MongoDB: AutoReconnect")


async def _all_records(store: MongoStore) -> list[Any]:
    return list(await store.audit_records(limit=10_000))


async def test_each_server_says_what_it_lacks(
    mongodb_server: Any, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = MongoStore(mongodb_server.uri, database=database)
    with caplog.at_level(logging.WARNING, logger="store.mongodb"):
        await store.open()
    try:
        warnings = " ".join(r.getMessage() for r in caplog.records)
        if mongodb_server.name == "ferretdb":
            # FerretDB v1 implements neither TTL indexes nor change streams.
            assert store.capabilities == frozenset()
            assert "no TTL indexes" in warnings
            assert "no change streams" in warnings
            assert store.change_feed() is None
        else:
            # MongoDB has TTL indexes; change streams need a replica set.
            assert "ttl_indexes" in store.capabilities
            assert "no TTL indexes" not in warnings
            assert ("change_streams" in store.capabilities) == (
                "no change streams" not in warnings
            )
    finally:
        await store.drop_database()
        await store.close()


@pytest.mark.parametrize("stage", ["write", "audit"])
async def test_move_cut_off_half_way_is_finished_later_with_one_audit_record(
    mongodb_server: Any, database: str, stage: str
) -> None:
    broken = OutageAfterClaim(mongodb_server.uri, database=database, stage=stage)
    await broken.open()
    healthy = MongoStore(mongodb_server.uri, database=database, move_wait=0.5)
    await healthy.open()
    try:
        request = make_request()
        await healthy.create_request(request)
        try:
            await broken.transition(
                request.request_id,
                from_states=[RequestState.PENDING],
                to_state=RequestState.APPROVED,
                now=NOW,
                audit=AuditEvent("sad.accepted", "device:d1", "request:r", "success"),
            )
        except StoreUnavailable:
            assert stage == "write"
        assert await _all_records(healthy) == []

        # The claim holds the request: no other move gets in meanwhile (a
        # move whose write is done has left pending, so nothing applies).
        rival = healthy.transition(
            request.request_id,
            from_states=[RequestState.PENDING],
            to_state=RequestState.CANCELLED,
            now=NOW,
        )
        if stage == "write":
            with pytest.raises(StoreBusy):
                await rival
        else:
            assert await rival is None
        # A young move belongs to a caller still at work: left alone.
        assert await healthy.flush_audit(now=datetime.now(UTC)) == 0

        later = datetime.now(UTC) + MOVE_GRACE + timedelta(seconds=1)
        assert await healthy.flush_audit(now=later) == 1
        assert await healthy.flush_audit(now=later) == 0

        finished = await healthy.get_request(request.request_id)
        assert finished is not None and finished.state is RequestState.APPROVED
        records = await _all_records(healthy)
        assert [(r.event, r.time) for r in records] == [("sad.accepted", NOW)]
        assert verify_chain(records).ok
    finally:
        await broken.close()
        await healthy.drop_database()
        await healthy.close()


async def test_move_audited_before_a_crash_is_not_audited_twice(
    stores: tuple[MongoStore, MongoStore], raw: Any
) -> None:
    store, _ = stores
    request = make_request()
    await store.create_request(request)
    await store.transition(
        request.request_id,
        from_states=[RequestState.PENDING],
        to_state=RequestState.APPROVED,
        now=NOW,
        audit=AuditEvent("sad.accepted", "device:d1", "request:r", "success"),
    )
    # As if the process died after the append and before marking it done.
    await raw["request_moves"].update_many({}, {"$set": {"done": False}})

    later = datetime.now(UTC) + MOVE_GRACE + timedelta(seconds=1)
    assert await store.flush_audit(now=later) == 1

    assert [r.event for r in await _all_records(store)] == ["sad.accepted"]
    moved = await store.get_request(request.request_id)
    assert moved is not None and moved.state is RequestState.APPROVED


async def test_expired_entries_are_taken_over_by_exactly_one_of_two_processes(
    stores: tuple[MongoStore, MongoStore],
) -> None:
    first = stores[0]
    past = datetime.now(UTC) - timedelta(seconds=1)
    future = datetime.now(UTC) + timedelta(minutes=5)
    assert await first.use_once("jti", "call-1", expires_at=past)
    await first.put_challenge("ch-1", expires_at=past)

    used = await asyncio.gather(
        *(s.use_once("jti", "call-1", expires_at=future) for s in stores * 4)
    )
    assert sum(used) == 1

    async def put(store: MongoStore) -> bool:
        try:
            await store.put_challenge("ch-1", expires_at=future)
        except DuplicateError:
            return False
        return True

    assert sum(await asyncio.gather(*(put(s) for s in stores * 4))) == 1
    taken = await asyncio.gather(
        *(s.take_challenge("ch-1", now=datetime.now(UTC)) for s in stores * 4)
    )
    assert sum(taken) == 1


async def test_activation_code_is_used_by_exactly_one_of_two_processes(
    stores: tuple[MongoStore, MongoStore],
) -> None:
    first = stores[0]
    await first.add_user(USER)
    now = datetime.now(UTC)
    await first.add_activation_code(
        ActivationCode(
            code_hash="h1",
            user_id=USER.user_id,
            expires_at=now + timedelta(minutes=5),
            created_at=now,
        )
    )

    used = await asyncio.gather(
        *(s.consume_activation_code("h1", now=now) for s in stores * 4)
    )

    assert sum(u is not None for u in used) == 1


async def test_chain_head_left_behind_by_a_crash_is_caught_up(
    stores: tuple[MongoStore, MongoStore], raw: Any
) -> None:
    store, _ = stores
    for n in range(3):
        await store.append_audit(
            time=NOW, event=f"e{n}", actor="a", subject="s", outcome="success"
        )
    # As if a process died between inserting record 3 and moving the head.
    first = await raw["audit"].find_one({"_id": 1})
    await raw["meta"].update_one(
        {"_id": "audit_head"}, {"$set": {"seq": 1, "hash": first["hash"]}}
    )

    added = await store.append_audit(
        time=NOW, event="e3", actor="a", subject="s", outcome="success"
    )

    assert added.seq == 4
    records = await _all_records(store)
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert verify_chain(records).ok


async def test_two_processes_appending_at_once_keep_one_chain(
    stores: tuple[MongoStore, MongoStore],
) -> None:
    first, second = stores

    async def append(store: MongoStore, name: str, n: int) -> None:
        await store.append_audit(
            time=NOW, event="e", actor=name, subject=str(n), outcome="success"
        )

    await asyncio.gather(
        *(append(first, "first", n) for n in range(15)),
        *(append(second, "second", n) for n in range(15)),
    )

    records = await _all_records(first)
    assert [r.seq for r in records] == list(range(1, 31))
    assert verify_chain(records).ok
    assert sorted((r.actor, r.subject) for r in records) == sorted(
        [("first", str(n)) for n in range(15)] + [("second", str(n)) for n in range(15)]
    )


async def test_two_processes_approving_at_once_have_one_winner_and_one_record(
    stores: tuple[MongoStore, MongoStore],
) -> None:
    first, second = stores
    request = make_request()
    await first.create_request(request)

    async def approve(store: MongoStore, name: str) -> object:
        return await store.transition(
            request.request_id,
            from_states=[RequestState.PENDING],
            to_state=RequestState.APPROVED,
            now=NOW,
            audit=AuditEvent("sad.accepted", name, "request", "success"),
        )

    results = await asyncio.gather(
        *(approve(store, f"p{n}") for n in range(5) for store in (first, second))
    )

    assert sum(r is not None for r in results) == 1
    assert [r.event for r in await _all_records(first)] == ["sad.accepted"]


async def test_idempotent_create_from_two_processes_keeps_the_first(
    stores: tuple[MongoStore, MongoStore],
) -> None:
    first, second = stores
    attempts = [
        make_request(request_id=f"r-{n}", idempotency_key="order-42") for n in range(6)
    ]

    created = await asyncio.gather(
        *(
            (first if n % 2 else second).create_request(attempt)
            for n, attempt in enumerate(attempts)
        )
    )

    assert len({c.request_id for c in created}) == 1
    assert len(await first.list_requests()) == 1


async def test_database_of_another_schema_version_is_refused(
    mongodb_server: Any, database: str, raw: Any
) -> None:
    await raw["meta"].insert_one({"_id": "schema", "version": 99})
    store = MongoStore(mongodb_server.uri, database=database)
    try:
        with pytest.raises(StoreError, match="schema version 99"):
            await store.open()
    finally:
        await raw.client.drop_database(database)


async def test_unreachable_server_is_unavailable_without_leaking_the_password() -> None:
    store = MongoStore(
        "mongodb://ops:s3cret-pw@127.0.0.1:1/?authSource=admin",
        server_selection_timeout=0.3,
    )
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
    assert "s3cret-pw" not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.get_setting("anything")


async def test_many_spends_of_one_authorisation_from_two_processes_all_land(
    stores: tuple[MongoStore, MongoStore],
) -> None:
    """Each distinct hash is spent and signed once; none is refused or lost
    while other callers hold the request (the review's 32 parallel calls)."""
    first = stores[0]
    hashes = tuple(f"aGFzaC0{n:03d}" for n in range(24))
    await seed(first)
    await first.create_request(
        make_request(kind=CSC, hashes=hashes, num_signatures=len(hashes))
    )
    now = datetime.now(UTC)
    await first.transition(
        "req-1",
        from_states=[RequestState.PENDING],
        to_state=RequestState.APPROVED,
        now=now,
        updates={
            "sad_digest": "d" * 64,
            "authorized_until": now + timedelta(minutes=5),
        },
    )

    async def spend(store: MongoStore, value: str) -> bool:
        reserved = await store.reserve_hashes("req-1", hashes=[value], now=now)
        if reserved is None:
            return False
        kept = await store.add_signatures(
            "req-1", hashes=[value], signatures=[f"sig-{value}"], now=now
        )
        return kept is not None

    results = await asyncio.gather(
        *(spend(stores[n % 2], value) for n, value in enumerate(hashes))
    )

    assert all(results)
    done = await first.get_request("req-1")
    assert done is not None and done.state is RequestState.SIGNED
    assert sorted(done.signed_hashes) == sorted(hashes)
    assert sorted(done.signatures or ()) == sorted(f"sig-{h}" for h in hashes)


async def test_verbose_server_logs_keep_pymongo_commands_out_sad6(
    stores: tuple[MongoStore, MongoStore], caplog: pytest.LogCaptureFixture
) -> None:
    store = stores[0]
    await store.add_user(USER)
    pymongo_logger = logging.getLogger("pymongo")
    before = pymongo_logger.level
    try:
        configure_logging(verbose=True)  # what `sigil -v serve` does
        with caplog.at_level(logging.DEBUG):
            await store.put_factors(
                UserFactors(USER.user_id, totp_secret="JBSWY3DPEHPK3PXPSECRET")
            )
            await store.put_setting("oauth.token_secret", "ab" * 32)
    finally:
        pymongo_logger.setLevel(before)

    assert "JBSWY3DPEHPK3PXPSECRET" not in caplog.text
    assert "ab" * 32 not in caplog.text
