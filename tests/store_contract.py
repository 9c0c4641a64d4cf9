"""The behaviour every store backend must show (STATE-2).

These tests take the ``store`` fixture from ``tests.conftest_store``, which
yields one opened store per backend; ``tests/test_store_contract.py``
collects them. Nothing here may reach past the ``Store`` interface.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from store import (
    ActivationCode,
    AuditEvent,
    Client,
    Credential,
    Device,
    DeviceStatus,
    DuplicateError,
    RequestState,
    SignatureRequest,
    Store,
    User,
    UserFactors,
)
from store.audit import GENESIS_HASH, verify_chain
from store.models import CSC

T0 = datetime(2030, 5, 17, 9, 30, 0, 123456, tzinfo=UTC)
SECOND = timedelta(seconds=1)
CET = timezone(timedelta(hours=2))

CLIENT = Client(
    client_id="client-1",
    name="Document portal",
    api_key_hash="a" * 64,
    created_at=T0,
)
OTHER_CLIENT = Client(
    client_id="client-2",
    name="HR system",
    api_key_hash="b" * 64,
    created_at=T0 + SECOND,
)
USER = User(
    user_id="user-1",
    display_name="Zoë Ångström",
    key_algorithm="ES256",
    created_at=T0,
)
CREDENTIAL = Credential(
    credential_id="cred-1",
    user_id="user-1",
    key_id="key-1",
    key_algorithm="ES256",
    certificate_der=b"\x30\x82\x01\x00cert\x00\xff",
    chain_der=(b"\x30\x82intermediate\x00", b"\x30\x82root\xff"),
    status="active",
    created_at=T0,
)

PENDING = RequestState.PENDING
APPROVED = RequestState.APPROVED
SIGNED = RequestState.SIGNED
FINAL_STATES = [s for s in RequestState if s.is_final]


async def seed(store: Store) -> None:
    """Add the client, user and credential that requests refer to."""
    await store.add_client(CLIENT)
    await store.add_client(OTHER_CLIENT)
    await store.add_user(USER)
    await store.add_credential(CREDENTIAL)


def make_request(request_id: str = "req-1", **changes: Any) -> SignatureRequest:
    request = SignatureRequest(
        request_id=request_id,
        client_id=CLIENT.client_id,
        user_id=USER.user_id,
        credential_id=CREDENTIAL.credential_id,
        hash_algorithm="2.16.840.1.101.3.4.2.1",
        hashes=("bWVzc2FnZSBoYXNoIG9uZQ==", "c2Vjb25kIGhhc2g="),
        display_text="Sign «Lease €1 200» — 東京 ✍️",
        nonce="n0nce-value",
        verification_code="4711",
        state=PENDING,
        created_at=T0,
        updated_at=T0,
        expires_at=T0 + 300 * SECOND,
    )
    return dataclasses.replace(request, **changes)


async def add_request(store: Store, request_id: str = "req-1", **changes: Any) -> None:
    await store.create_request(make_request(request_id, **changes))


# -- settings -----------------------------------------------------------------
async def test_setting_is_none_until_put_and_then_overwritten(store: Store) -> None:
    assert await store.get_setting("vapid_public_key") is None

    await store.put_setting("vapid_public_key", "BPk…")
    assert await store.get_setting("vapid_public_key") == "BPk…"

    await store.put_setting("vapid_public_key", "second")
    assert await store.get_setting("vapid_public_key") == "second"


# -- clients ------------------------------------------------------------------
async def test_client_is_found_by_key_hash_and_listed(store: Store) -> None:
    await store.add_client(CLIENT)
    await store.add_client(OTHER_CLIENT)

    assert await store.client_by_key_hash(CLIENT.api_key_hash) == CLIENT
    assert await store.client_by_key_hash("f" * 64) is None
    assert await store.list_clients() == [CLIENT, OTHER_CLIENT]


@pytest.mark.parametrize(
    "duplicate",
    [
        dataclasses.replace(CLIENT, api_key_hash="c" * 64),
        dataclasses.replace(CLIENT, client_id="client-9"),
    ],
    ids=["same-id", "same-key-hash"],
)
async def test_duplicate_client_id_or_key_hash_is_refused(
    store: Store, duplicate: Client
) -> None:
    await store.add_client(CLIENT)

    with pytest.raises(DuplicateError):
        await store.add_client(duplicate)
    assert await store.list_clients() == [CLIENT]


# -- users and activation codes -------------------------------------------------
async def test_user_round_trips_and_is_listed(store: Store) -> None:
    second = User("user-2", "Ola Nordmann", "RS256", T0 + SECOND)
    await store.add_user(USER)
    await store.add_user(second)

    assert await store.get_user("user-1") == USER
    assert await store.get_user("nobody") is None
    assert await store.list_users() == [USER, second]


async def test_duplicate_user_id_is_refused(store: Store) -> None:
    await store.add_user(USER)

    with pytest.raises(DuplicateError):
        await store.add_user(dataclasses.replace(USER, display_name="Impostor"))
    assert await store.get_user("user-1") == USER


async def test_activation_code_is_consumed_only_once(store: Store) -> None:
    await store.add_user(USER)
    code = ActivationCode("h" * 64, "user-1", T0 + 600 * SECOND, T0)
    await store.add_activation_code(code)

    assert await store.consume_activation_code("h" * 64, now=T0) == code
    assert await store.consume_activation_code("h" * 64, now=T0) is None


async def test_expired_activation_code_is_refused(store: Store) -> None:
    await store.add_user(USER)
    expires = T0 + 600 * SECOND
    await store.add_activation_code(ActivationCode("h" * 64, "user-1", expires, T0))

    assert await store.consume_activation_code("h" * 64, now=expires) is None
    assert await store.consume_activation_code("h" * 64, now=T0) is None


async def test_unknown_activation_code_is_refused(store: Store) -> None:
    assert await store.consume_activation_code("u" * 64, now=T0) is None


async def test_concurrent_activation_code_use_has_one_winner(store: Store) -> None:
    await store.add_user(USER)
    await store.add_activation_code(
        ActivationCode("h" * 64, "user-1", T0 + 600 * SECOND, T0)
    )

    results = await asyncio.gather(
        *(store.consume_activation_code("h" * 64, now=T0) for _ in range(20))
    )

    assert sum(r is not None for r in results) == 1


async def test_new_activation_code_replaces_the_users_earlier_one(
    store: Store,
) -> None:
    await store.add_user(USER)
    await store.add_activation_code(
        ActivationCode("a" * 64, "user-1", T0 + 600 * SECOND, T0)
    )
    await store.add_activation_code(
        ActivationCode("b" * 64, "user-1", T0 + 600 * SECOND, T0)
    )

    assert await store.consume_activation_code("a" * 64, now=T0) is None
    assert await store.consume_activation_code("b" * 64, now=T0) is not None


async def test_activation_code_of_another_user_is_a_duplicate(store: Store) -> None:
    await store.add_user(USER)
    await store.add_user(replace(USER, user_id="user-2"))
    await store.add_activation_code(
        ActivationCode("h" * 64, "user-1", T0 + 600 * SECOND, T0)
    )

    with pytest.raises(DuplicateError):
        await store.add_activation_code(
            ActivationCode("h" * 64, "user-2", T0 + 600 * SECOND, T0)
        )


async def test_revoking_a_client_keeps_its_first_revocation_time(
    store: Store,
) -> None:
    await store.add_client(CLIENT)

    first = await store.revoke_client(CLIENT.client_id, now=T0)
    again = await store.revoke_client(CLIENT.client_id, now=T0 + SECOND)
    missing = await store.revoke_client("nobody", now=T0)

    assert first is not None and first.revoked_at == T0
    assert again is not None and again.revoked_at == T0
    assert missing is None
    found = await store.client_by_key_hash(CLIENT.api_key_hash)
    assert found is not None and found.revoked_at == T0


# -- devices -------------------------------------------------------------------
def make_device(device_id: str = "dev-1", **changes: Any) -> Device:
    device = Device(
        device_id=device_id,
        user_id="user-1",
        public_key_jwk={"kty": "EC", "crv": "P-256", "x": "f83O", "y": "x_FE"},
        push_subscription={
            "endpoint": "https://push.example/send/abc",
            "keys": {"p256dh": "BNc…", "auth": "tBH…"},
        },
        status=DeviceStatus.ACTIVE,
        name="Zoë's phone 📱",
        created_at=T0,
    )
    return dataclasses.replace(device, **changes)


async def test_device_round_trips_and_is_listed_per_user(store: Store) -> None:
    await store.add_user(USER)
    await store.add_user(User("user-2", "Other", "ES256", T0))
    first = make_device()
    second = make_device("dev-2", push_subscription=None, created_at=T0 + SECOND)
    foreign = make_device("dev-3", user_id="user-2")
    for device in (first, second, foreign):
        await store.add_device(device)

    assert await store.get_device("dev-1") == first
    assert await store.get_device("dev-2") == second
    assert await store.get_device("nope") is None
    assert await store.list_devices(user_id="user-1") == [first, second]
    assert len(await store.list_devices()) == 3


async def test_duplicate_device_id_is_refused(store: Store) -> None:
    await store.add_user(USER)
    await store.add_device(make_device())

    with pytest.raises(DuplicateError):
        await store.add_device(make_device(name="again"))


async def test_device_status_changes_and_unknown_device_gives_none(
    store: Store,
) -> None:
    await store.add_user(USER)
    await store.add_device(make_device())

    revoked = await store.set_device_status("dev-1", DeviceStatus.REVOKED)

    assert revoked == make_device(status=DeviceStatus.REVOKED)
    assert await store.get_device("dev-1") == revoked
    assert await store.set_device_status("nope", DeviceStatus.REVOKED) is None


async def test_push_subscription_is_cleared_only_for_its_endpoint(
    store: Store,
) -> None:
    """PUSH-2: a 404/410 drops the subscription, not a newer one."""
    await store.add_user(USER)
    await store.add_device(make_device())

    cleared = await store.clear_push_subscription("dev-1", "https://old.example/x")
    assert not cleared
    assert (await store.get_device("dev-1")) == make_device()

    cleared = await store.clear_push_subscription(
        "dev-1", "https://push.example/send/abc"
    )
    assert cleared
    device = await store.get_device("dev-1")
    assert device is not None
    assert device.push_subscription is None

    cleared = await store.clear_push_subscription(
        "dev-1", "https://push.example/send/abc"
    )
    assert not cleared


# -- credentials ---------------------------------------------------------------
async def test_credential_round_trips_bytes_and_chain(store: Store) -> None:
    await store.add_user(USER)
    await store.add_user(User("user-2", "Other", "ES256", T0))
    other = dataclasses.replace(
        CREDENTIAL, credential_id="cred-2", user_id="user-2", chain_der=()
    )
    await store.add_credential(CREDENTIAL)
    await store.add_credential(other)

    stored = await store.get_credential("cred-1")
    assert stored == CREDENTIAL
    assert stored is not None
    assert isinstance(stored.chain_der, tuple)
    assert await store.get_credential("nope") is None
    assert await store.list_credentials(user_id="user-1") == [CREDENTIAL]
    assert await store.list_credentials() == [CREDENTIAL, other]


async def test_duplicate_credential_id_is_refused(store: Store) -> None:
    await store.add_user(USER)
    await store.add_credential(CREDENTIAL)

    with pytest.raises(DuplicateError):
        await store.add_credential(CREDENTIAL)


# -- single-use values ---------------------------------------------------------
async def test_use_once_accepts_a_value_once_per_scope(store: Store) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=5)

    assert await store.use_once("device-call", "id-1", expires_at=expires)
    assert not await store.use_once("device-call", "id-1", expires_at=expires)
    assert await store.use_once("totp:user-1", "id-1", expires_at=expires)


async def test_use_once_accepts_an_expired_value_again(store: Store) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    future = datetime.now(UTC) + timedelta(minutes=5)

    assert await store.use_once("device-call", "id-1", expires_at=past)
    assert await store.use_once("device-call", "id-1", expires_at=future)
    assert not await store.use_once("device-call", "id-1", expires_at=future)


async def test_concurrent_use_once_has_one_winner(store: Store) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=5)

    results = await asyncio.gather(
        *(store.use_once("device-call", "id-1", expires_at=expires) for _ in range(20))
    )

    assert results.count(True) == 1


async def test_challenge_is_taken_only_once(store: Store) -> None:
    await store.put_challenge("chal-1", expires_at=T0 + 60 * SECOND)

    assert await store.take_challenge("chal-1", now=T0)
    assert not await store.take_challenge("chal-1", now=T0)
    assert not await store.take_challenge("never-issued", now=T0)


async def test_expired_challenge_is_refused(store: Store) -> None:
    expires = T0 + 60 * SECOND
    await store.put_challenge("chal-1", expires_at=expires)

    assert not await store.take_challenge("chal-1", now=expires)


async def test_concurrent_challenge_take_has_one_winner(store: Store) -> None:
    await store.put_challenge("chal-1", expires_at=T0 + 60 * SECOND)

    results = await asyncio.gather(
        *(store.take_challenge("chal-1", now=T0) for _ in range(20))
    )

    assert results.count(True) == 1


async def test_live_challenge_cannot_be_issued_twice(store: Store) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=1)
    await store.put_challenge("chal-1", expires_at=expires)

    with pytest.raises(DuplicateError):
        await store.put_challenge("chal-1", expires_at=expires)


# -- signature requests: create and read ----------------------------------------
async def test_request_round_trips_exactly(store: Store) -> None:
    await seed(store)
    request = make_request(
        idempotency_key="ключ-1",
        created_at=T0.astimezone(CET),
        signatures=("c2ln",),
        sad_digest="d" * 64,
        error="ünïcode error",
    )

    created = await store.create_request(request)
    fetched = await store.get_request("req-1")

    assert created == request
    assert fetched == request
    assert fetched is not None
    assert isinstance(fetched.hashes, tuple)
    assert isinstance(fetched.signatures, tuple)
    assert fetched.state is PENDING
    assert fetched.created_at.utcoffset() == timedelta(0)
    assert fetched.display_text == "Sign «Lease €1 200» — 東京 ✍️"


async def test_unknown_request_is_none(store: Store) -> None:
    assert await store.get_request("nope") is None


async def test_duplicate_request_id_is_refused(store: Store) -> None:
    await seed(store)
    await add_request(store)

    with pytest.raises(DuplicateError):
        await add_request(store, display_text="other")


async def test_idempotent_create_returns_the_first_request(store: Store) -> None:
    await seed(store)
    first = await store.create_request(make_request(idempotency_key="k-1"))

    again = await store.create_request(
        make_request("req-2", idempotency_key="k-1", display_text="changed")
    )

    assert again == first
    assert await store.get_request("req-2") is None


async def test_idempotency_key_is_scoped_to_the_client(store: Store) -> None:
    await seed(store)
    await add_request(store, idempotency_key="k-1")

    other = await store.create_request(
        make_request("req-2", client_id=OTHER_CLIENT.client_id, idempotency_key="k-1")
    )

    assert other.request_id == "req-2"


async def test_concurrent_idempotent_creates_store_one_request(store: Store) -> None:
    await seed(store)
    requests = [make_request(f"req-{i}", idempotency_key="k-1") for i in range(20)]

    results = await asyncio.gather(*(store.create_request(r) for r in requests))

    assert len({r.request_id for r in results}) == 1
    assert len(await store.list_requests()) == 1


async def test_requests_are_listed_newest_first_with_filters(store: Store) -> None:
    await seed(store)
    await add_request(store, "r1", created_at=T0)
    await add_request(store, "r2", created_at=T0 + SECOND, state=APPROVED)
    await add_request(
        store, "r3", created_at=T0 + 2 * SECOND, client_id=OTHER_CLIENT.client_id
    )

    def ids(requests: list[SignatureRequest]) -> list[str]:
        return [r.request_id for r in requests]

    assert ids(await store.list_requests()) == ["r3", "r2", "r1"]
    assert ids(await store.list_requests(limit=2)) == ["r3", "r2"]
    assert ids(await store.list_requests(client_id="client-1")) == ["r2", "r1"]
    assert ids(await store.list_requests(states=[PENDING])) == ["r3", "r1"]
    assert ids(
        await store.list_requests(user_id="user-1", states=[APPROVED, SIGNED])
    ) == ["r2"]
    assert await store.list_requests(user_id="user-2") == []
    assert await store.list_requests(states=[]) == []


async def test_naive_datetimes_are_refused(store: Store) -> None:
    await seed(store)

    with pytest.raises(ValueError, match="timezone-aware"):
        await add_request(store, expires_at=datetime(2030, 1, 1))


# -- signature requests: transitions (STATE-1) ----------------------------------
async def test_transition_moves_pending_to_approved(store: Store) -> None:
    """STATE-1: one conditional update returns the moved record."""
    await seed(store)
    await add_request(store)
    now = T0 + 10 * SECOND

    moved = await store.transition(
        "req-1",
        from_states=[PENDING],
        to_state=APPROVED,
        now=now,
        not_expired=True,
        updates={"sad_digest": "s" * 64},
    )

    expected = make_request(state=APPROVED, updated_at=now, sad_digest="s" * 64)
    assert moved == expected
    assert await store.get_request("req-1") == expected


async def test_transition_from_a_state_not_named_changes_nothing(
    store: Store,
) -> None:
    """STATE-1: a request that already moved on is left as it is."""
    await seed(store)
    await add_request(store, state=APPROVED)

    moved = await store.transition(
        "req-1", from_states=[PENDING], to_state=RequestState.REJECTED, now=T0
    )

    assert moved is None
    assert await store.get_request("req-1") == make_request(state=APPROVED)


async def test_transition_appends_its_audit_record_when_it_moves(
    store: Store,
) -> None:
    """AUD-1, STATE-1: a state change and its audit record go together."""
    await seed(store)
    await add_request(store)
    event = AuditEvent("sad.accepted", "device:d", "request:req-1", "success", {"n": 1})

    moved = await store.transition(
        "req-1", from_states=[PENDING], to_state=APPROVED, now=T0, audit=event
    )
    again = await store.transition(
        "req-1", from_states=[PENDING], to_state=APPROVED, now=T0, audit=event
    )

    assert moved is not None and again is None
    records = list(await store.audit_records())
    assert [(r.event, r.subject, r.details, r.time) for r in records] == [
        ("sad.accepted", "request:req-1", {"n": 1}, T0)
    ]
    assert verify_chain(records).ok


async def test_concurrent_transitions_with_audit_leave_one_record(
    store: Store,
) -> None:
    """SAD-4: of twenty racing moves one wins, and only it is audited."""
    await seed(store)
    await add_request(store)
    event = AuditEvent("sad.accepted", "device:d", "request:req-1", "success")

    results = await asyncio.gather(
        *(
            store.transition(
                "req-1", from_states=[PENDING], to_state=APPROVED, now=T0, audit=event
            )
            for _ in range(20)
        )
    )

    assert sum(r is not None for r in results) == 1
    assert len(await store.audit_records()) == 1


async def test_transition_of_unknown_request_is_none(store: Store) -> None:
    moved = await store.transition(
        "nope", from_states=[PENDING], to_state=APPROVED, now=T0
    )
    assert moved is None


@pytest.mark.parametrize(
    ("from_states", "to_state"),
    [
        ([SIGNED], RequestState.FAILED),
        ([PENDING, RequestState.EXPIRED], APPROVED),
        ([APPROVED], PENDING),
        ([APPROVED], APPROVED),
    ],
    ids=["out-of-final", "final-among-sources", "back-to-pending", "to-itself"],
)
async def test_backward_moves_are_refused(
    store: Store, from_states: list[RequestState], to_state: RequestState
) -> None:
    """STATE-1: states move only forward."""
    await seed(store)
    await add_request(store)

    with pytest.raises(ValueError):
        await store.transition(
            "req-1", from_states=from_states, to_state=to_state, now=T0
        )


async def test_transition_with_not_expired_refuses_an_expired_request(
    store: Store,
) -> None:
    await seed(store)
    await add_request(store)
    expiry = make_request().expires_at

    late = await store.transition(
        "req-1", from_states=[PENDING], to_state=APPROVED, now=expiry, not_expired=True
    )
    assert late is None

    just_in_time = await store.transition(
        "req-1",
        from_states=[PENDING],
        to_state=APPROVED,
        now=expiry - timedelta(microseconds=1),
        not_expired=True,
    )
    assert just_in_time is not None


async def test_transition_ignores_expiry_unless_asked(store: Store) -> None:
    await seed(store)
    await add_request(store, state=APPROVED)
    later = make_request().expires_at + 60 * SECOND

    moved = await store.transition(
        "req-1", from_states=[APPROVED], to_state=SIGNED, now=later
    )

    assert moved is not None
    assert moved.state is SIGNED


@pytest.mark.parametrize("final_state", FINAL_STATES)
async def test_final_state_sets_finished_at(
    store: Store, final_state: RequestState
) -> None:
    await seed(store)
    await add_request(store, state=APPROVED)
    now = T0 + 20 * SECOND

    moved = await store.transition(
        "req-1", from_states=[PENDING, APPROVED], to_state=final_state, now=now
    )

    assert moved is not None
    assert moved.state is final_state
    assert moved.finished_at == now
    assert moved.updated_at == now


async def test_approval_leaves_finished_at_unset(store: Store) -> None:
    await seed(store)
    await add_request(store)

    moved = await store.transition(
        "req-1", from_states=[PENDING], to_state=APPROVED, now=T0 + SECOND
    )

    assert moved is not None
    assert moved.finished_at is None


async def test_signing_stores_signatures_as_a_tuple(store: Store) -> None:
    await seed(store)
    await add_request(store, state=APPROVED)

    moved = await store.transition(
        "req-1",
        from_states=[APPROVED],
        to_state=SIGNED,
        now=T0 + SECOND,
        updates={"signatures": ("MEUCIQ==", "MEQCIA==")},
    )

    assert moved is not None
    assert moved.signatures == ("MEUCIQ==", "MEQCIA==")
    fetched = await store.get_request("req-1")
    assert fetched is not None
    assert fetched.signatures == ("MEUCIQ==", "MEQCIA==")


async def test_failure_records_its_error(store: Store) -> None:
    await seed(store)
    await add_request(store, state=APPROVED)

    moved = await store.transition(
        "req-1",
        from_states=[APPROVED],
        to_state=RequestState.FAILED,
        now=T0 + SECOND,
        updates={"error": "HSM session lost"},
    )

    assert moved is not None
    assert moved.error == "HSM session lost"


@pytest.mark.parametrize(
    "updates",
    [
        {"state": "signed"},
        {"hashes": ("x",)},
        {"signatures": "not-a-tuple"},
        {"signatures": (b"bytes",)},
        {"error": 42},
    ],
    ids=["state", "hashes", "signatures-str", "signatures-bytes", "error-int"],
)
async def test_transition_refuses_other_updates(
    store: Store, updates: dict[str, Any]
) -> None:
    await seed(store)
    await add_request(store)

    with pytest.raises(ValueError):
        await store.transition(
            "req-1",
            from_states=[PENDING],
            to_state=APPROVED,
            now=T0,
            updates=updates,
        )
    assert await store.get_request("req-1") == make_request()


async def test_concurrent_approvals_have_exactly_one_winner(store: Store) -> None:
    """STATE-1, and the basis of SAD-4: one of 20 concurrent moves wins."""
    await seed(store)
    await add_request(store)

    results = await asyncio.gather(
        *(
            store.transition(
                "req-1",
                from_states=[PENDING],
                to_state=APPROVED,
                now=T0 + SECOND,
                not_expired=True,
                updates={"sad_digest": f"{i:064d}"},
            )
            for i in range(20)
        )
    )

    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert await store.get_request("req-1") == winners[0]


# -- signature requests: housekeeping --------------------------------------------
async def test_expire_due_moves_only_pending_requests_past_expiry(
    store: Store,
) -> None:
    await seed(store)
    expiry = T0 + 60 * SECOND
    await add_request(store, "due", expires_at=expiry)
    await add_request(store, "live", expires_at=expiry + SECOND)
    await add_request(store, "approved", expires_at=expiry - SECOND, state=APPROVED)
    await add_request(
        store, "rejected", expires_at=expiry - SECOND, state=RequestState.REJECTED
    )

    expired = await store.expire_due(now=expiry)

    assert expired == ["due"]
    due = await store.get_request("due")
    assert due is not None
    assert due.state is RequestState.EXPIRED
    assert due.finished_at == expiry
    for request_id, state in [
        ("live", PENDING),
        ("approved", APPROVED),
        ("rejected", RequestState.REJECTED),
    ]:
        untouched = await store.get_request(request_id)
        assert untouched is not None
        assert untouched.state is state
    assert await store.expire_due(now=expiry) == []


async def test_expire_due_compares_instants_across_time_zones(store: Store) -> None:
    await seed(store)
    await add_request(store, expires_at=(T0 + 60 * SECOND).astimezone(CET))

    assert await store.expire_due(now=T0 + 59 * SECOND) == []
    assert await store.expire_due(now=T0 + 60 * SECOND) == ["req-1"]


async def test_fail_stale_approved_fails_only_old_approvals(store: Store) -> None:
    """STATE-3: an approval left unsigned by a crash ends as failed."""
    await seed(store)
    cutoff = T0 + 60 * SECOND
    await add_request(store, "stale", state=APPROVED, updated_at=cutoff - SECOND)
    await add_request(store, "fresh", state=APPROVED, updated_at=cutoff)
    await add_request(store, "pending", updated_at=cutoff - SECOND)
    now = cutoff + SECOND

    failed = await store.fail_stale_approved(before=cutoff, now=now)

    assert failed == ["stale"]
    stale = await store.get_request("stale")
    assert stale is not None
    assert stale.state is RequestState.FAILED
    assert stale.finished_at == now
    assert stale.error
    fresh = await store.get_request("fresh")
    pending = await store.get_request("pending")
    assert fresh is not None
    assert pending is not None
    assert fresh.state is APPROVED
    assert pending.state is PENDING


async def test_purge_finished_deletes_only_old_final_requests(store: Store) -> None:
    await seed(store)
    for request_id in ("old", "recent", "pending"):
        await add_request(store, request_id)
    for request_id, finished in (("old", T0 + SECOND), ("recent", T0 + 9 * SECOND)):
        await store.transition(
            request_id,
            from_states=[PENDING],
            to_state=RequestState.CANCELLED,
            now=finished,
        )

    purged = await store.purge_finished(before=T0 + 5 * SECOND)

    assert purged == 1
    assert await store.get_request("old") is None
    assert await store.get_request("recent") is not None
    assert await store.get_request("pending") is not None


# -- audit trail (AUD-2, AUD-3) --------------------------------------------------
async def test_audit_records_are_chained_from_genesis(store: Store) -> None:
    """AUD-3: each record links to the hash of the one before."""
    first = await store.append_audit(
        time=T0, event="start", actor="system", subject="server", outcome="success"
    )
    second = await store.append_audit(
        time=T0 + SECOND,
        event="sad.accepted",
        actor="device:dev-1",
        subject="request:req-1",
        outcome="success",
        details={"hashes": 2, "note": "größe ✓"},
    )

    assert (first.seq, first.prev_hash) == (1, GENESIS_HASH)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert first.details == {}
    assert await store.audit_records() == [first, second]
    assert verify_chain(await store.audit_records()) == verify_chain([first, second])
    assert verify_chain(await store.audit_records()).ok


async def test_audit_record_round_trips_time_and_details(store: Store) -> None:
    record = await store.append_audit(
        time=T0.astimezone(CET),
        event="device.enrolled",
        actor="admin:élodie",
        subject="device:dev-1",
        outcome="success",
        details={"nested": {"list": (1, "二")}, "flag": True, "none": None},
    )

    [stored] = await store.audit_records()
    assert stored == record
    assert stored.time == T0
    assert stored.time.utcoffset() == timedelta(0)
    assert stored.details == {"nested": {"list": [1, "二"]}, "flag": True, "none": None}


async def test_audit_records_page_by_seq(store: Store) -> None:
    for i in range(5):
        await store.append_audit(
            time=T0 + i * SECOND, event="e", actor="a", subject="s", outcome="success"
        )

    page = await store.audit_records(after_seq=2, limit=2)

    assert [r.seq for r in page] == [3, 4]
    before = (await store.audit_records(after_seq=1, limit=1))[0]
    assert verify_chain(page, start_prev_hash=before.hash).ok


async def test_concurrent_audit_appends_keep_one_chain(store: Store) -> None:
    """AUD-3: 50 concurrent appends give seq 1..50 and a valid chain."""
    await asyncio.gather(
        *(
            store.append_audit(
                time=T0,
                event="key.used",
                actor="sam",
                subject=f"request:{i}",
                outcome="success",
            )
            for i in range(50)
        )
    )

    records = await store.audit_records()
    assert [r.seq for r in records] == list(range(1, 51))
    result = verify_chain(records)
    assert result.ok, result.reason
    assert result.checked == 50


async def test_audit_refuses_details_that_are_not_json(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.append_audit(
            time=T0,
            event="e",
            actor="a",
            subject="s",
            outcome="success",
            details={"raw": b"\x00"},
        )
    assert await store.audit_records() == []


# -- second factors (AUTH-3) ------------------------------------------------
async def test_user_keeps_its_second_factor_policy(store: Store) -> None:
    await store.add_user(replace(USER, user_id="user-pin", second_factor="pin"))

    found = await store.get_user("user-pin")
    assert found is not None and found.second_factor == "pin"
    await store.add_user(USER)
    assert (await store.get_user(USER.user_id)).second_factor == "none"  # type: ignore[union-attr]


async def test_factors_round_trip_and_are_replaced(store: Store) -> None:
    await store.add_user(USER)
    assert await store.get_factors(USER.user_id) is None
    factors = UserFactors(
        user_id=USER.user_id,
        pin_hash="$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
        totp_secret="JBSWY3DPEHPK3PXP",
    )

    await store.put_factors(factors)
    assert await store.get_factors(USER.user_id) == factors
    await store.put_factors(replace(factors, pin_hash=None, totp_last_step=7))
    again = await store.get_factors(USER.user_id)
    assert again is not None
    assert (again.pin_hash, again.totp_last_step) == (None, 7)
    assert "JBSWY3DP" not in repr(again) and "argon2" not in repr(factors)


async def test_totp_step_is_accepted_once_and_never_an_earlier_one(
    store: Store,
) -> None:
    await store.add_user(USER)
    now = datetime.now(UTC)
    await store.put_factors(UserFactors(USER.user_id, totp_secret="JBSWY3DPEHPK3PXP"))

    assert await store.accept_totp_step(USER.user_id, 1000, now=now)
    assert not await store.accept_totp_step(USER.user_id, 1000, now=now)
    assert not await store.accept_totp_step(USER.user_id, 999, now=now)
    assert await store.accept_totp_step(USER.user_id, 1001, now=now)
    factors = await store.get_factors(USER.user_id)
    assert factors is not None and factors.totp_last_step == 1001


async def test_concurrent_uses_of_one_totp_step_have_one_winner(store: Store) -> None:
    await store.add_user(USER)
    await store.put_factors(UserFactors(USER.user_id, totp_secret="JBSWY3DPEHPK3PXP"))
    now = datetime.now(UTC)

    results = await asyncio.gather(
        *(store.accept_totp_step(USER.user_id, 5000, now=now) for _ in range(8))
    )

    assert sum(results) == 1


async def test_totp_step_without_a_secret_is_refused(store: Store) -> None:
    await store.add_user(USER)
    assert not await store.accept_totp_step(USER.user_id, 1, now=datetime.now(UTC))


async def test_clear_use_once_forgets_one_scope_only(store: Store) -> None:
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert await store.use_once("pin:user-1", "1", expires_at=later)
    assert await store.use_once("pin:user-1", "2", expires_at=later)
    assert await store.use_once("pin:user-2", "1", expires_at=later)

    assert await store.clear_use_once("pin:user-1") == 2

    assert await store.use_once("pin:user-1", "1", expires_at=later)
    assert not await store.use_once("pin:user-2", "1", expires_at=later)


# -- CSC authorisations ------------------------------------------------------
HASHES = ("aGFzaC1vbmU=", "aGFzaC10d28=", "aGFzaC10aHJlZQ==")


async def authorised(
    store: Store, *, num: int = 3, until: datetime = T0 + 60 * SECOND
) -> None:
    """A CSC authorisation over HASHES that the phone has approved."""
    await seed(store)
    await store.create_request(
        make_request(kind=CSC, hashes=HASHES, num_signatures=num)
    )
    moved = await store.transition(
        "req-1",
        from_states=[PENDING],
        to_state=APPROVED,
        now=T0,
        updates={"sad_digest": "d" * 64, "authorized_until": until},
    )
    assert moved is not None


async def test_csc_authorisation_round_trips(store: Store) -> None:
    await authorised(store)

    found = await store.get_request("req-1")
    assert found is not None
    assert (found.kind, found.num_signatures, found.used_hashes) == (CSC, 3, ())
    assert found.authorized_until == T0 + 60 * SECOND


async def test_hashes_are_spent_once_and_signed_to_the_end(store: Store) -> None:
    await authorised(store)

    first = await store.reserve_hashes("req-1", hashes=HASHES[:2], now=T0)
    assert first is not None and first.used_hashes == HASHES[:2]
    assert await store.reserve_hashes("req-1", hashes=HASHES[1:2], now=T0) is None

    kept = await store.add_signatures(
        "req-1", hashes=HASHES[:2], signatures=("s1", "s2"), now=T0
    )
    assert kept is not None and kept.state is APPROVED
    assert kept.signatures == ("s1", "s2") and kept.signed_hashes == HASHES[:2]

    assert await store.reserve_hashes("req-1", hashes=HASHES[2:], now=T0) is not None
    done = await store.add_signatures(
        "req-1",
        hashes=HASHES[2:],
        signatures=("s3",),
        now=T0 + SECOND,
        audit=AuditEvent("key.used", "server", "request:req-1", "success"),
    )
    assert done is not None and done.state is SIGNED
    assert done.finished_at == T0 + SECOND
    assert done.signatures == ("s1", "s2", "s3")
    records = await store.audit_records()
    assert [r.event for r in records] == ["key.used"]


@pytest.mark.parametrize(
    ("hashes", "why"),
    [
        (("bm90LWNvdmVyZWQ=",), "a hash the approval does not cover"),
        ((HASHES[0], HASHES[0]), "the same hash twice"),
        ((), "no hash"),
    ],
)
async def test_hashes_outside_the_authorisation_are_refused(
    store: Store, hashes: tuple[str, ...], why: str
) -> None:
    await authorised(store)

    assert await store.reserve_hashes("req-1", hashes=hashes, now=T0) is None, why
    found = await store.get_request("req-1")
    assert found is not None and found.used_hashes == ()


async def test_no_more_signatures_than_authorised(store: Store) -> None:
    await authorised(store, num=1)

    assert await store.reserve_hashes("req-1", hashes=HASHES[:2], now=T0) is None
    assert await store.reserve_hashes("req-1", hashes=HASHES[:1], now=T0) is not None
    assert await store.reserve_hashes("req-1", hashes=HASHES[1:2], now=T0) is None


async def test_concurrent_spending_never_goes_past_the_number(store: Store) -> None:
    await authorised(store, num=2)

    results = await asyncio.gather(
        *(
            store.reserve_hashes("req-1", hashes=(h,), now=T0)
            for h in HASHES
            for _ in range(3)
        )
    )

    assert sum(r is not None for r in results) == 2
    found = await store.get_request("req-1")
    assert found is not None and len(set(found.used_hashes)) == 2


async def test_expired_authorisation_cannot_be_spent_or_extended_and_expires(
    store: Store,
) -> None:
    await authorised(store, until=T0 + 10 * SECOND)
    late = T0 + 10 * SECOND

    assert await store.reserve_hashes("req-1", hashes=HASHES[:1], now=late) is None
    assert (
        await store.extend_authorization("req-1", until=late + 60 * SECOND, now=late)
        is None
    )
    assert await store.expire_due(now=late) == ["req-1"]
    found = await store.get_request("req-1")
    assert found is not None and found.state is RequestState.EXPIRED


async def test_live_authorisation_is_extended_never_shortened(store: Store) -> None:
    await authorised(store, until=T0 + 10 * SECOND)

    longer = await store.extend_authorization(
        "req-1", until=T0 + 70 * SECOND, now=T0 + 5 * SECOND
    )
    assert longer is not None and longer.authorized_until == T0 + 70 * SECOND
    same = await store.extend_authorization(
        "req-1", until=T0 + 20 * SECOND, now=T0 + 6 * SECOND
    )
    assert same is not None and same.authorized_until == T0 + 70 * SECOND


async def test_crash_recovery_leaves_csc_authorisations_alone(store: Store) -> None:
    await authorised(store, until=T0 + 3600 * SECOND)

    failed = await store.fail_stale_approved(
        before=T0 + 600 * SECOND, now=T0 + 600 * SECOND
    )

    assert failed == []
    found = await store.get_request("req-1")
    assert found is not None and found.state is APPROVED


async def test_relying_party_request_cannot_be_spent_like_csc(store: Store) -> None:
    await seed(store)
    await add_request(store)
    await store.transition("req-1", from_states=[PENDING], to_state=APPROVED, now=T0)

    assert (
        await store.reserve_hashes("req-1", hashes=make_request().hashes[:1], now=T0)
        is None
    )


async def test_update_request_of_unknown_request_is_none(store: Store) -> None:
    assert await store.update_request("nope", lambda r: {"error": "x"}, now=T0) is None
