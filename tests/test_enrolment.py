"""Who may add a device to whom, and what an enrolment costs when it fails."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from mobile_stub import Policy, SimulatedPhone
from mobile_stub.errors import EnrolmentError
from server.enrolment import activation_code_hash
from store import ActivationCode, DeviceStatus
from tests.conftest_server import EnrolFactory, Sigil, make_settings


async def test_relying_app_cannot_add_a_device_to_an_enrolled_user(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)

    status, body = await sigil.rp.call(
        "POST", f"/api/v1/users/{user.user_id}/activation-codes"
    )

    assert (status, body["error"]) == (409, "user_already_enrolled")
    assert len(await sigil.store.list_devices(user_id=user.user_id)) == 1


async def test_relying_app_cannot_issue_codes_for_another_apps_user(
    sigil: Sigil,
) -> None:
    created = await sigil.rp.create_user("Frank")
    other = await sigil.new_client("Other Bank")

    status, body = await other.call(
        "POST", f"/api/v1/users/{created['user_id']}/activation-codes"
    )

    assert (status, body["error"]) == (404, "unknown_user")


async def test_operator_code_adds_a_second_device(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    code = await sigil.operator_code(user.user_id)

    async with SimulatedPhone(sigil.url, policy=Policy.SILENT) as second:
        enrolment = await second.enrol(code)

    assert enrolment.credential_id == user.credential_id
    assert len(await sigil.store.list_devices(user_id=user.user_id)) == 2


async def test_activation_code_is_read_without_case_or_dashes(sigil: Sigil) -> None:
    created = await sigil.rp.create_user("Grace")
    code = await sigil.rp.activation_code(created["user_id"])
    typed = code.replace("-", " ").lower()

    async with SimulatedPhone(sigil.url, policy=Policy.SILENT) as phone:
        enrolment = await phone.enrol(typed)

    assert enrolment.user_id == created["user_id"]


async def test_new_activation_code_replaces_the_earlier_one(sigil: Sigil) -> None:
    created = await sigil.rp.create_user("Heidi")
    first = await sigil.rp.activation_code(created["user_id"])
    second = await sigil.rp.activation_code(created["user_id"])

    async with SimulatedPhone(sigil.url, policy=Policy.SILENT) as phone:
        with pytest.raises(EnrolmentError) as raised:
            await phone.enrol(first)
        await phone.enrol(second)

    assert raised.value.status == 403


async def test_failed_enrolment_gives_the_activation_code_back(sigil: Sigil) -> None:
    """One key enrolling for two users at once: the loser's code survives."""
    ivan = await sigil.rp.create_user("Ivan")
    judy = await sigil.rp.create_user("Judy")
    codes = [
        await sigil.rp.activation_code(ivan["user_id"]),
        await sigil.rp.activation_code(judy["user_id"]),
    ]
    async with SimulatedPhone(sigil.url, policy=Policy.SILENT) as phone:
        results = await asyncio.gather(
            *(phone.enrol(code) for code in codes), return_exceptions=True
        )
    failed = [i for i, r in enumerate(results) if isinstance(r, EnrolmentError)]

    assert len(failed) == 1
    loser = results[failed[0]]
    assert isinstance(loser, EnrolmentError) and loser.status == 409
    async with SimulatedPhone(sigil.url, policy=Policy.SILENT) as retry:
        enrolment = await retry.enrol(codes[failed[0]])
    assert enrolment.user_id == [ivan, judy][failed[0]]["user_id"]


@pytest.mark.parametrize("settings_overrides", [{"allow_http_push": False}])
async def test_plain_http_push_endpoint_is_refused_unless_allowed(
    sigil: Sigil,
) -> None:
    created = await sigil.rp.create_user("Kim")
    code = await sigil.rp.activation_code(created["user_id"])

    async with SimulatedPhone(sigil.url, policy=Policy.SILENT) as phone:
        with pytest.raises(EnrolmentError) as raised:
            await phone.enrol(code)
    assert raised.value.error == "invalid_push_subscription"
    assert await sigil.store.list_devices(user_id=created["user_id"]) == []
    # The code was not spent on the refused enrolment.
    still_there = await sigil.store.consume_activation_code(
        activation_code_hash(code), now=datetime.now(UTC)
    )
    assert still_there is not None


@pytest.mark.parametrize(
    ("endpoint", "allowed"),
    [
        ("https://push.example/abc", True),
        ("http://127.0.0.1:9/push", False),
        ("https://user:secret@push.example/abc", False),
        ("ftp://push.example/abc", False),
        ("https:///no-host", False),
        ("https://push.example:99999/x", False),
    ],
)
def test_push_endpoint_rules(endpoint: str, allowed: bool) -> None:
    from server.push import check_push_endpoint

    assert (check_push_endpoint(endpoint, allow_http=False) is None) is allowed


def test_development_settings_allow_http_push_only_when_configured() -> None:
    from pathlib import Path

    from server.config import Settings

    assert Settings(home=Path("x")).allow_http_push is False
    assert make_settings(Path("x")).allow_http_push is True


async def test_relying_app_code_issued_during_an_enrolment_cannot_add_a_device(
    sigil: Sigil,
) -> None:
    """A second code slipped in while the first device was enrolling (the
    window of an RSA key generation) is refused when it is used."""
    created = await sigil.rp.create_user("Liam")
    user_id = created["user_id"]
    first = await sigil.rp.activation_code(user_id)
    async with SimulatedPhone(sigil.url, policy=Policy.SILENT) as phone:
        await phone.enrol(first)
    # As if issued in the window, before the first device was stored:
    late = "LATEC-ODE00-00000-00000"
    await sigil.store.add_activation_code(
        ActivationCode(
            code_hash=activation_code_hash(late),
            user_id=user_id,
            expires_at=datetime.now(UTC) + timedelta(minutes=5),
            created_at=datetime.now(UTC),
            issued_by="client:portal",
        )
    )

    async with SimulatedPhone(sigil.url, policy=Policy.SILENT) as intruder:
        with pytest.raises(EnrolmentError) as raised:
            await intruder.enrol(late)
        intruder_id = intruder.device_id

    assert (raised.value.status, raised.value.error) == (409, "user_already_enrolled")
    devices = {
        d.device_id: d.status for d in await sigil.store.list_devices(user_id=user_id)
    }
    assert devices[intruder_id] is DeviceStatus.REVOKED
    assert sum(s is DeviceStatus.ACTIVE for s in devices.values()) == 1


@pytest.mark.parametrize(
    ("keys", "allowed"),
    [
        ({"p256dh": "AA", "auth": "AA"}, False),
        ({"p256dh": "BA" + "A" * 84, "auth": "A" * 22}, False),
    ],
)
def test_push_keys_that_cannot_encrypt_are_refused(
    keys: dict[str, str], allowed: bool
) -> None:
    from server.push import check_push_keys

    assert (check_push_keys(keys) is None) is allowed


def test_real_push_keys_are_accepted() -> None:
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from server.push import check_push_keys

    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    keys = {
        "p256dh": base64.urlsafe_b64encode(point).rstrip(b"=").decode(),
        "auth": base64.urlsafe_b64encode(bytes(16)).rstrip(b"=").decode(),
    }

    assert check_push_keys(keys) is None
