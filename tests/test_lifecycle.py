"""Crash recovery, retention and the housekeeping of requests (STATE-1,
STATE-3)."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta

import pytest

from mobile_stub import Policy
from store import RequestState
from tests.conftest_server import EnrolFactory, Sigil, sha256


async def test_request_cut_off_while_signing_is_failed_on_recovery_state3(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created = await sigil.ask(user)
    rid = created["request_id"]
    # A crash right after the SAD was consumed: approved, never signed.
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    moved = await sigil.store.transition(
        rid,
        from_states=(RequestState.PENDING,),
        to_state=RequestState.APPROVED,
        now=long_ago,
        updates={"sad_digest": "0" * 64},
    )
    assert moved is not None

    await sigil.service.recover()

    result = await sigil.rp.get(rid)
    assert result["state"] == "failed"
    assert "signatures" not in result
    details = await user.phone.fetch(rid)
    sad = user.phone.make_sad(details, vc=created["verification_code"])
    status, body = await user.phone.approve(rid, sad)
    assert (status, body["error"]) == (409, "request_not_pending")


async def test_recent_approval_is_left_alone_by_recovery(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created = await sigil.ask(user)
    await sigil.store.transition(
        created["request_id"],
        from_states=(RequestState.PENDING,),
        to_state=RequestState.APPROVED,
        now=datetime.now(UTC),
    )

    await sigil.service.recover()

    assert (await sigil.rp.get(created["request_id"]))["state"] == "approved"


@pytest.mark.parametrize(
    "settings_overrides", [{"finished_retention": 1, "min_ttl": 1}]
)
async def test_finished_request_answers_404_after_retention(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created = await sigil.ask(user)
    rid = created["request_id"]
    await sigil.rp.cancel(rid)
    assert (await sigil.rp.get(rid))["state"] == "cancelled"

    await asyncio.sleep(1.2)
    status, body = await sigil.rp.call("GET", f"/api/v1/signature-requests/{rid}")

    assert (status, body["error"]) == (404, "not_found")


@pytest.mark.parametrize("settings_overrides", [{"min_ttl": 1}])
async def test_sweeper_expires_requests_nobody_reads(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created = await sigil.rp.request_signature(
        user_id=user.user_id, hashes=[sha256(b"x")], display_text="Sign?", ttl_seconds=1
    )

    await asyncio.sleep(2.5)
    stored = await sigil.store.get_request(created["request_id"])

    assert stored is not None and stored.state is RequestState.EXPIRED
    events = [r.event for r in await sigil.store.audit_records()]
    assert "request.expired" in events


async def test_device_sees_only_its_users_pending_requests(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    alice = await enrol(policy=Policy.SILENT)
    bob = await enrol(policy=Policy.SILENT)
    created = await sigil.ask(alice)

    alice_sees = await alice.phone.pending_request_ids()
    bob_sees = await bob.phone.pending_request_ids()
    status, body = await bob.phone.call(
        "GET", f"/device/v1/requests/{created['request_id']}"
    )

    assert list(alice_sees) == [created["request_id"]]
    assert list(bob_sees) == []
    assert (status, body["error"]) == (404, "not_found")


@pytest.mark.parametrize("settings_overrides", [{"max_pending_per_user": 3}])
async def test_too_many_pending_requests_for_one_user_get_429(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    for i in range(3):
        await sigil.rp.request_signature(
            user_id=user.user_id, hashes=[sha256(bytes([i]))], display_text="Sign?"
        )

    status, body = await sigil.rp.call(
        "POST",
        "/api/v1/signature-requests",
        {
            "user_id": user.user_id,
            "hash_algorithm": "SHA-256",
            "hashes": [base64.b64encode(sha256(b"x")).decode()],
            "display_text": "Sign?",
        },
    )

    assert (status, body["error"]) == (429, "too_many_pending_requests")
    assert len(await sigil.store.list_requests(user_id=user.user_id)) == 3


async def test_stopping_server_answers_open_long_polls_at_once(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created = await sigil.ask(user)
    poll = asyncio.create_task(sigil.rp.get(created["request_id"], wait=25))
    await asyncio.sleep(0.2)

    started = asyncio.get_running_loop().time()
    sigil.service.watch.close()
    result = await asyncio.wait_for(poll, 5)

    assert result["state"] == "pending"
    assert asyncio.get_running_loop().time() - started < 2


async def test_revoked_api_key_is_refused_auth1(sigil: Sigil) -> None:
    other = await sigil.new_client("Closing Shop")
    clients = {c.name: c for c in await sigil.store.list_clients()}
    await sigil.store.revoke_client(
        clients["Closing Shop"].client_id, now=datetime.now(UTC)
    )

    status, _ = await other.call("GET", "/api/v1/ca")
    status_user, body_user = await other.call(
        "POST", "/api/v1/users", {"display_name": "Zed"}
    )

    assert status == 200  # the CA certificate is public
    assert (status_user, body_user["error"]) == (401, "unauthorized")
    assert "revoked" in body_user["error_description"]
