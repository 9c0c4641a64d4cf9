"""The database goes away and comes back, under a running server.

The server here runs on the MongoDB store over a FerretDB process of this
test's own, which the test really stops and starts again (no fake). While
it is down every call that needs the database answers 503 with the JSON
error body and Retry-After; nothing is half-written; when it is back the
same server process carries on by itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devtools.ferretdb import FerretDB
from hsm import Hsm
from mobile_stub import Policy
from store import RequestState
from store.audit import verify_chain
from store.mongodb import MongoStore
from tests.conftest_server import EnrolFactory, Sigil, make_settings, serve, sha256


@pytest.fixture
async def sigil(
    tmp_path: Path, hsm: Hsm, ferretdb_private: FerretDB
) -> AsyncIterator[Sigil]:
    """The usual test server, on the MongoDB store over a private FerretDB."""
    store = MongoStore(
        ferretdb_private.uri, database="sigil_outage", server_selection_timeout=1.0
    )
    await store.open()
    try:
        async with serve(make_settings(tmp_path), store, hsm) as running:
            yield running
    finally:
        await store.close()


async def _create(sigil: Sigil, user_id: str) -> tuple[int, Any, dict[str, str]]:
    body = {
        "user_id": user_id,
        "hash_algorithm": "SHA-256",
        "hashes": ["sR0+rLvZV1r0bUTRGsDg0ogqWT6cAEYpeW/6bBIjE1s="],
        "display_text": "Sign during an outage?",
    }
    async with sigil.session.post(
        f"{sigil.url}/api/v1/signature-requests",
        json=body,
        headers={"Authorization": f"Bearer {sigil.rp.api_key}"},
    ) as response:
        return response.status, await response.json(), dict(response.headers)


async def test_outage_answers_503_writes_nothing_and_recovers_by_itself(
    sigil: Sigil, enrol: EnrolFactory, ferretdb_private: FerretDB
) -> None:
    user = await enrol()
    before = await sigil.ask(user)
    enrol.expected[before["request_id"]] = before["verification_code"]  # type: ignore[attr-defined]
    assert (await sigil.rp.wait_final(before["request_id"]))["state"] == "signed"
    audit_before = len(await sigil.store.audit_records(limit=10_000))

    await asyncio.to_thread(ferretdb_private.stop)

    status, body, headers = await _create(sigil, user.user_id)
    assert status == 503
    assert body == {
        "error": "service_unavailable",
        "error_description": "the database cannot be reached; try again shortly",
    }
    assert headers["Retry-After"] == "5"
    status, answer = await sigil.rp.call(
        "GET", f"/api/v1/signature-requests/{before['request_id']}"
    )
    assert (status, answer["error"]) == (503, "service_unavailable")

    await asyncio.to_thread(ferretdb_private.restart)

    # The same server process reconnects on its own, within a few seconds.
    deadline = time.monotonic() + 15
    while True:
        status, body, _ = await _create(sigil, user.user_id)
        if status != 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert status == 201, body
    enrol.expected[body["request_id"]] = body["verification_code"]  # type: ignore[attr-defined]
    after = await sigil.rp.wait_final(body["request_id"])
    assert after["state"] == "signed"

    # Only the requests made while the database was up exist, each whole.
    stored = await sigil.store.list_requests(user_id=user.user_id)
    assert sorted(r.request_id for r in stored) == sorted(
        [before["request_id"], body["request_id"]]
    )
    assert all(r.state is RequestState.SIGNED and r.signatures for r in stored)
    records = await sigil.store.audit_records(limit=10_000)
    assert len(records) > audit_before
    assert verify_chain(records).ok


async def test_long_poll_during_an_outage_ends_in_503_not_a_hang(
    sigil: Sigil, enrol: EnrolFactory, ferretdb_private: FerretDB
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created = await sigil.rp.request_signature(
        user_id=user.user_id, hashes=[sha256(b"x")], display_text="Sign?"
    )

    polling = asyncio.create_task(
        sigil.rp.call(
            "GET", f"/api/v1/signature-requests/{created['request_id']}?wait=20"
        )
    )
    await asyncio.sleep(0.5)
    await asyncio.to_thread(ferretdb_private.stop)
    status, answer = await asyncio.wait_for(polling, 15)

    assert (status, answer["error"]) == (503, "service_unavailable")

    await asyncio.to_thread(ferretdb_private.restart)
    deadline = time.monotonic() + 15
    while True:
        status, answer = await sigil.rp.call(
            "GET", f"/api/v1/signature-requests/{created['request_id']}"
        )
        if status != 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert status == 200
    assert answer["state"] == "pending"
