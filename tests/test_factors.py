"""Second factors (AUTH-3) over real HTTP on loopback: a signer's PIN, kept as
an Argon2 hash and locked after repeated failures, and a TOTP provisioned at
enrolment whose codes are accepted once; never in a log, a repr or the audit
trail (SAD-6)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

import pyotp
import pytest

from mobile_stub import Policy, SimulatedPhone
from mobile_stub._state import PhoneState
from mobile_stub.errors import EnrolmentError
from sam.factors import FactorRefused
from server.config import ConfigError, load_settings
from server.service import EnrolledDevice
from store import AuditRecord
from tests.conftest_server import EnrolFactory, Enrolled, Sigil
from tests.conftest_store import BACKENDS, Backend, resolve_backend

PIN = "804917362551"
WRONG = "111122223333"
BOTH = pytest.mark.parametrize("store_backend", BACKENDS, indirect=True)


@pytest.fixture
def store_backend(request: pytest.FixtureRequest) -> Backend:
    """SQLite, or each backend where a test says ``@BOTH`` (STATE-2)."""
    return resolve_backend(request, getattr(request, "param", "sqlite"))


async def _pending(sigil: Sigil, user: Enrolled) -> tuple[str, str, dict[str, Any]]:
    """A request the (silent) phone has fetched: id, code and its details."""
    created = await sigil.ask(user)
    rid = created["request_id"]
    await user.phone.wait_for(rid)
    return rid, created["verification_code"], await user.phone.fetch(rid)


async def _approve(
    user: Enrolled, rid: str, code: str, details: dict[str, Any], **factor: str
) -> tuple[int, Any]:
    sad = user.phone.make_sad(details, vc=code)
    return await user.phone.approve(rid, sad, **factor)


async def _audit(sigil: Sigil, event: str) -> list[AuditRecord]:
    return [r for r in await sigil.store.audit_records() if r.event == event]


async def _state(sigil: Sigil, rid: str) -> str:
    return str((await sigil.rp.get(rid))["state"])


# -- PIN ------------------------------------------------------------------------


@BOTH
async def test_pin_signer_signs_with_the_right_pin_auth3(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(second_factor="pin", pin=PIN)
    factors = await sigil.store.get_factors(user.user_id)
    created = await sigil.ask(user)
    enrol.expected[created["request_id"]] = created["verification_code"]  # type: ignore[attr-defined]

    shown = await user.phone.wait_for(created["request_id"])
    result = await sigil.rp.wait_final(created["request_id"], timeout=20)

    assert factors is not None and factors.pin_hash is not None
    assert factors.pin_hash.startswith("$argon2id$")
    assert shown.second_factor == "pin"
    assert shown.outcome is not None and shown.outcome[0] == 200
    assert result["state"] == "signed"
    (checked,) = await _audit(sigil, "factor.checked")
    assert (checked.actor, checked.subject, checked.outcome) == (
        f"user:{user.user_id}",
        f"user:{user.user_id}",
        "success",
    )
    assert checked.details == {"factor": "pin"}


@BOTH
async def test_wrong_pin_leaves_the_request_pending_then_the_right_one_signs_auth3(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(second_factor="pin", pin=PIN)
    user.phone.pin = WRONG
    created = await sigil.ask(user)
    rid = created["request_id"]
    enrol.expected[rid] = created["verification_code"]  # type: ignore[attr-defined]

    shown = await user.phone.wait_for(rid)
    assert shown.outcome is not None
    status, body = shown.outcome
    assert (status, body["error"]) == (403, "invalid_pin")
    assert "4 tries left" in body["error_description"]
    assert await _state(sigil, rid) == "pending"

    details = await user.phone.fetch(rid)
    status, body = await _approve(
        user, rid, created["verification_code"], details, pin=PIN
    )

    assert (status, body["state"]) == (200, "signed")
    outcomes = [r.outcome for r in await _audit(sigil, "factor.checked")]
    assert outcomes == ["refused:invalid", "success"]


async def test_five_wrong_pins_lock_even_the_right_one_until_unlocked_auth3(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT, second_factor="pin", pin=PIN)
    rid, code, details = await _pending(sigil, user)

    wrong = [await _approve(user, rid, code, details, pin=WRONG) for _ in range(5)]
    locked = await _approve(user, rid, code, details, pin=PIN)

    assert [(s, b["error"]) for s, b in wrong] == [(403, "invalid_pin")] * 5
    assert "0 tries left" in wrong[-1][1]["error_description"]
    assert (locked[0], locked[1]["error"]) == (403, "pin_locked")
    assert "administrator" in locked[1]["error_description"]
    assert await _state(sigil, rid) == "pending"

    assert await sigil.service.factors.unlock(user.user_id) == 5
    status, body = await _approve(user, rid, code, details, pin=PIN)

    assert (status, body["state"]) == (200, "signed")
    (unlocked,) = await _audit(sigil, "factor.unlocked")
    assert (unlocked.actor, unlocked.subject) == ("operator", f"user:{user.user_id}")
    outcomes = [r.outcome for r in await _audit(sigil, "factor.checked")]
    assert outcomes == ["refused:invalid"] * 5 + ["refused:locked", "success"]


@pytest.mark.parametrize("settings_overrides", [{"pin_lock_seconds": 3}])
async def test_pin_lock_times_out_auth3(sigil: Sigil, enrol: EnrolFactory) -> None:
    user = await enrol(policy=Policy.SILENT, second_factor="pin", pin=PIN)
    rid, code, details = await _pending(sigil, user)

    started = time.monotonic()
    await asyncio.gather(
        *(_approve(user, rid, code, details, pin=WRONG) for _ in range(5))
    )
    status, body = await _approve(user, rid, code, details, pin=PIN)
    assert time.monotonic() - started < 3, "too slow to see the lock"
    assert (status, body["error"]) == (403, "pin_locked")

    await asyncio.sleep(3.3 - (time.monotonic() - started))
    status, body = await _approve(user, rid, code, details, pin=PIN)

    assert (status, body["state"]) == (200, "signed")


@BOTH
async def test_ten_parallel_wrong_pins_verify_at_most_five_auth3(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT, second_factor="pin", pin=PIN)
    rid, code, details = await _pending(sigil, user)

    answers = await asyncio.gather(
        *(_approve(user, rid, code, details, pin=WRONG) for _ in range(10))
    )

    errors = sorted(body["error"] for _, body in answers)
    assert set(errors) <= {"invalid_pin", "pin_locked"}
    assert errors.count("invalid_pin") <= 5
    verified = [
        r
        for r in await _audit(sigil, "factor.checked")
        if r.outcome == "refused:invalid"
    ]
    assert len(verified) <= 5
    assert await _state(sigil, rid) == "pending"
    status, body = await _approve(user, rid, code, details, pin=PIN)
    assert (status, body["error"]) == (403, "pin_locked")


# -- TOTP -----------------------------------------------------------------------


@BOTH
async def test_totp_signer_gets_an_otpauth_uri_and_signs_with_a_code_auth3(
    sigil: Sigil, enrol: EnrolFactory, tmp_path: Path
) -> None:
    user = await enrol(second_factor="totp")
    enrolment = user.phone.enrolment
    assert enrolment is not None and enrolment.totp_uri is not None
    uri = enrolment.totp_uri
    factors = await sigil.store.get_factors(user.user_id)
    assert factors is not None and factors.totp_secret is not None

    assert uri.startswith(f"otpauth://totp/Sigil:{user.user_id}?")
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    assert (totp.secret, totp.issuer, totp.digits, totp.interval) == (
        factors.totp_secret,
        "Sigil",
        6,
        30,
    )
    assert pyotp.TOTP(factors.totp_secret).verify(totp.now(), valid_window=1)

    created = await sigil.ask(user)
    enrol.expected[created["request_id"]] = created["verification_code"]  # type: ignore[attr-defined]
    shown = await user.phone.wait_for(created["request_id"])
    result = await sigil.rp.wait_final(created["request_id"], timeout=20)

    assert shown.second_factor == "totp"
    assert result["state"] == "signed"
    (checked,) = await _audit(sigil, "factor.checked")
    assert (checked.outcome, checked.details) == ("success", {"factor": "otp"})

    # The phone keeps the secret in its state file, and only there.
    path = tmp_path / "phone.json"
    user.phone.save(path)
    assert PhoneState.read(path).totp_secret == factors.totp_secret
    reloaded = SimulatedPhone.load(path, sigil.url, policy=Policy.SILENT)
    code = await reloaded.fresh_otp()
    assert pyotp.TOTP(factors.totp_secret).verify(code, valid_window=1)


@BOTH
async def test_a_totp_code_is_never_accepted_twice_auth3(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT, second_factor="totp")
    first_rid, first_code, first = await _pending(sigil, user)
    second_rid, second_code, second = await _pending(sigil, user)
    otp = await user.phone.fresh_otp()

    ok = await _approve(user, first_rid, first_code, first, otp=otp)
    reused = await _approve(user, second_rid, second_code, second, otp=otp)

    assert (ok[0], ok[1]["state"]) == (200, "signed")
    assert (reused[0], reused[1]["error"]) == (403, "invalid_otp")
    assert "used already" in reused[1]["error_description"]
    assert await _state(sigil, second_rid) == "pending"


# -- what approvals and enrolments must carry ---------------------------------------


@pytest.mark.parametrize("second_factor", ["pin", "totp"])
async def test_approval_without_the_factor_is_refused_rejection_needs_none_auth3(
    sigil: Sigil, enrol: EnrolFactory, second_factor: str
) -> None:
    pin = PIN if second_factor == "pin" else None
    user = await enrol(policy=Policy.SILENT, second_factor=second_factor, pin=pin)
    rid, code, details = await _pending(sigil, user)
    assert details["second_factor"] == second_factor

    status, body = await _approve(user, rid, code, details)
    assert (status, body["error"]) == (403, "second_factor_required")
    assert await _state(sigil, rid) == "pending"

    sad = user.phone.make_sad(details, decision="reject", vc=code)
    status, body = await user.phone.reject(rid, sad)
    assert (status, body["state"]) == (200, "rejected")


async def test_a_factor_the_request_does_not_ask_for_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    plain = await enrol(policy=Policy.SILENT)
    pinned = await enrol(policy=Policy.SILENT, second_factor="pin", pin=PIN)
    rid, code, details = await _pending(sigil, plain)
    pin_rid, pin_code, pin_details = await _pending(sigil, pinned)

    assert details["second_factor"] == "none"
    for answer in (
        await _approve(plain, rid, code, details, pin=PIN),
        await _approve(plain, rid, code, details, otp="123456"),
        await _approve(pinned, pin_rid, pin_code, pin_details, otp="123456"),
    ):
        assert (answer[0], answer[1]["error"]) == (400, "invalid_request")
    assert await _audit(sigil, "factor.checked") == []


@pytest.mark.parametrize(
    "factor",
    [
        {"pin": "123"},
        {"pin": "1234567890123"},
        {"pin": "12a4"},
        {"pin": "\u0661\u0662\u0663\u0664"},
        {"pin": 1234},
        {"otp": "12345"},
        {"otp": "123456789"},
        {"otp": "12 456"},
    ],
    ids=[
        "pin short",
        "pin long",
        "pin letter",
        "pin arabic",
        "pin number",
        "otp short",
        "otp long",
        "otp space",
    ],
)
async def test_malformed_factor_in_an_approval_is_a_400_input1(
    sigil: Sigil, enrol: EnrolFactory, factor: dict[str, Any]
) -> None:
    user = await enrol(policy=Policy.SILENT, second_factor="pin", pin=PIN)
    rid, code, details = await _pending(sigil, user)
    sad = user.phone.make_sad(details, vc=code)

    status, body = await user.phone.call(
        "POST", f"/device/v1/requests/{rid}/approve", {"sad": sad, **factor}
    )

    assert (status, body["error"]) == (400, "invalid_request")
    assert str(next(iter(factor.values()))) not in body["error_description"]
    assert await _audit(sigil, "factor.checked") == []


async def _refused_enrolment(
    sigil: Sigil, code: str, pin: str | None
) -> EnrolmentError:
    async with SimulatedPhone(sigil.url, policy=Policy.SILENT, pin=pin) as phone:
        with pytest.raises(EnrolmentError) as raised:
            await phone.enrol(code)
    return raised.value


async def test_enrolment_without_the_required_pin_leaves_nothing_auth3(
    sigil: Sigil,
) -> None:
    user = await sigil.rp.create_user("Pia", second_factor="pin")
    user_id = user["user_id"]
    assert user["second_factor"] == "pin"
    code = await sigil.rp.activation_code(user_id)

    refused = await _refused_enrolment(sigil, code, None)

    assert (refused.status, refused.error) == (400, "invalid_request")
    assert refused.error_description == (
        "this signer's policy asks for a PIN at enrolment"
    )
    assert await sigil.store.list_devices(user_id=user_id) == []
    assert await sigil.store.list_credentials(user_id=user_id) == []
    assert await sigil.store.get_factors(user_id) is None

    async with SimulatedPhone(sigil.url, policy=Policy.SILENT, pin=PIN) as phone:
        enrolment = await phone.enrol(code)  # the same code still works
    assert enrolment.user_id == user_id
    assert enrolment.totp_uri is None


@pytest.mark.parametrize(
    ("second_factor", "pin"),
    [
        ("pin", "123"),
        ("pin", "1234567890123"),
        ("pin", "12a4"),
        ("pin", "\u0661\u0662\u0663\u0664"),
        ("none", PIN),
        ("totp", PIN),
    ],
    ids=["short", "long", "letter", "arabic digits", "policy none", "policy totp"],
)
async def test_enrolment_with_a_pin_that_does_not_fit_is_refused_auth3(
    sigil: Sigil, second_factor: str, pin: str
) -> None:
    user = await sigil.rp.create_user("Quinn", second_factor=second_factor)
    code = await sigil.rp.activation_code(user["user_id"])

    refused = await _refused_enrolment(sigil, code, pin)

    assert (refused.status, refused.error) == (400, "invalid_request")
    assert pin not in (refused.error_description or "")
    assert await sigil.store.list_devices(user_id=user["user_id"]) == []
    assert await sigil.store.get_factors(user["user_id"]) is None


async def test_second_factor_policy_must_be_known(sigil: Sigil) -> None:
    status, body = await sigil.rp.call(
        "POST", "/api/v1/users", {"display_name": "R", "second_factor": "sms"}
    )

    assert (status, body["error"]) == (400, "invalid_request")


# -- secrets ------------------------------------------------------------------


def _contains(text: str, secret: str) -> bool:
    """``secret`` as a whole token: digits not inside a longer number."""
    return (
        re.search(rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])", text)
        is not None
    )


async def test_no_pin_code_secret_or_hash_reaches_logs_audit_or_reprs_sad6(
    sigil: Sigil,
    enrol: EnrolFactory,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    pinned = await enrol(policy=Policy.SILENT, second_factor="pin", pin=PIN)
    rid, code, details = await _pending(sigil, pinned)
    await _approve(pinned, rid, code, details, pin=WRONG)
    await _approve(pinned, rid, code, details, pin=PIN)
    timed = await enrol(policy=Policy.SILENT, second_factor="totp")
    rid, code, details = await _pending(sigil, timed)
    otp = await timed.phone.fresh_otp()
    await _approve(timed, rid, code, details, otp=otp)
    await _approve(timed, rid, code, details, otp=otp)  # refused: not pending

    pin_factors = await sigil.store.get_factors(pinned.user_id)
    totp_factors = await sigil.store.get_factors(timed.user_id)
    assert pin_factors is not None and pin_factors.pin_hash is not None
    assert totp_factors is not None and totp_factors.totp_secret is not None
    enrolment = timed.phone.enrolment
    assert enrolment is not None and enrolment.totp_uri is not None
    state_file = tmp_path / "phone.json"
    timed.phone.save(state_file)
    secrets = {
        "PIN": PIN,
        "wrong PIN": WRONG,
        "PIN hash": pin_factors.pin_hash,
        "TOTP secret": totp_factors.totp_secret,
        "TOTP URI": enrolment.totp_uri,
        "one-time code": otp,
    }
    logged = "\n".join(r.getMessage() for r in caplog.records)
    audit = "\n".join(repr(r) for r in await sigil.store.audit_records())
    reprs = "\n".join(
        repr(value)
        for value in (
            pin_factors,
            totp_factors,
            pinned.phone,
            timed.phone,
            enrolment,
            sigil.service.factors,
            sigil.service,
            FactorRefused("pin", "invalid", tries_left=3),
            EnrolledDevice(
                device=(await sigil.store.list_devices(user_id=timed.user_id))[0],
                credential=(await sigil.store.get_credential(timed.credential_id))
                or pytest.fail("no credential"),
                totp_uri=enrolment.totp_uri,
            ),
            PhoneState.read(state_file),
        )
    )
    assert caplog.records
    for name, value in secrets.items():
        assert not _contains(logged, value), f"{name} reached the log"
        assert not _contains(audit, value), f"{name} reached the audit trail"
        assert not _contains(reprs, value), f"{name} shows in a repr"


# -- configuration and the operator's command line ---------------------------


def test_factor_settings_come_from_sigil_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIGIL_CONFIG", raising=False)
    config = tmp_path / "sigil.toml"
    config.write_text("[factors]\npin_max_tries = 3\npin_lock_seconds = 60\n")

    settings = load_settings(tmp_path)
    config.write_text("[factors]\npin_max_tries = 0\n")

    assert (settings.pin_max_tries, settings.pin_lock_seconds) == (3, 60)
    with pytest.raises(ConfigError, match="pin_max_tries"):
        load_settings(tmp_path)
