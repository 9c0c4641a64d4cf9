"""The MongoDB test harness itself: the session server answers and keeps
data, and a private FerretDB goes down and comes back with its data."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import ConnectionFailure

from devtools.ferretdb import FerretDB
from tests.conftest_mongo import MongoServer

Client = AsyncMongoClient[dict[str, Any]]


@pytest.fixture
async def client(mongodb_server: MongoServer) -> AsyncIterator[Client]:
    opened: Client = AsyncMongoClient(mongodb_server.uri, serverSelectionTimeoutMS=5000)
    try:
        yield opened
    finally:
        await opened.close()


async def test_session_server_pings_stores_and_reads(
    mongodb_server: MongoServer, client: Client, mongodb_database_name: str
) -> None:
    assert mongodb_server.name in {"ferretdb", "mongodb"}
    if not os.environ.get("MONGODB_URI"):
        # No server named: this session started FerretDB itself.
        assert mongodb_server.name == "ferretdb"
        assert mongodb_server.ferretdb is not None
        assert mongodb_server.ferretdb.running
        assert mongodb_server.ferretdb.uri == mongodb_server.uri

    assert (await client.admin.command("ping"))["ok"] == 1
    db = client[mongodb_database_name]
    try:
        inserted = await db.things.insert_one({"name": "seal", "hashes": [b"\x01\x02"]})
        found = await db.things.find_one({"_id": inserted.inserted_id})
        assert found == {
            "_id": inserted.inserted_id,
            "name": "seal",
            "hashes": [b"\x01\x02"],
        }
        assert await db.things.count_documents({}) == 1
    finally:
        await client.drop_database(mongodb_database_name)


async def _ping_until_up(client: Client, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            await client.admin.command("ping")
            return
        except ConnectionFailure:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_private_ferretdb_outage_and_recovery(
    ferretdb_private: FerretDB, mongodb_database_name: str
) -> None:
    client: Client = AsyncMongoClient(
        ferretdb_private.uri, serverSelectionTimeoutMS=500
    )
    try:
        things = client[mongodb_database_name].things
        await things.insert_one({"_id": "before-outage", "n": 1})

        await asyncio.to_thread(ferretdb_private.stop)
        assert not ferretdb_private.running
        started = time.monotonic()
        with pytest.raises(ConnectionFailure):
            await client.admin.command("ping")
        assert time.monotonic() - started < 5

        port = ferretdb_private.port
        await asyncio.to_thread(ferretdb_private.restart)
        assert ferretdb_private.running
        assert ferretdb_private.port == port

        # The same client finds the server again once it is back.
        await _ping_until_up(client, within=10)
        assert await things.find_one({"_id": "before-outage"}) == {
            "_id": "before-outage",
            "n": 1,
        }
    finally:
        await client.close()
