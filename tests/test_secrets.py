"""Secrets never reach a log, a repr or an error body (SAD-6)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mobile_stub import Policy, SimulatedPhone
from server.enrolment import IssuedCode
from store import Client, RequestState, SignatureRequest
from tests.conftest_server import EnrolFactory, Sigil, make_settings, sha256


async def test_no_secret_reaches_the_logs_or_the_audit_trail_sad6(
    sigil: Sigil, enrol: EnrolFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user = await sigil.rp.create_user("Erin")
    code = await sigil.rp.activation_code(user["user_id"])
    async with SimulatedPhone(sigil.url, policy=Policy.SILENT) as phone:
        await phone.enrol(code)
        created = await sigil.rp.request_signature(
            user_id=user["user_id"], hashes=[sha256(b"x")], display_text="Sign?"
        )
        rid = created["request_id"]
        await phone.wait_for(rid)
        details = await phone.fetch(rid)
        captured: list[str] = []
        bad_sad = phone.make_sad(details, vc="0000", overrides={"aud": "x"})
        await phone.call(
            "POST",
            f"/device/v1/requests/{rid}/approve",
            {"sad": bad_sad},
            capture=captured,
        )
        sad = phone.make_sad(details, vc=created["verification_code"])
        status, _ = await phone.approve(rid, sad)
        assert status == 200

    secrets = {
        "activation code": code,
        "SAD": sad,
        "refused SAD": bad_sad,
        "nonce": details["nonce"],
        "API key": sigil.rp.api_key,
        "device call signature": captured[0].split(" ", 1)[1],
    }
    logged = "\n".join(r.getMessage() for r in caplog.records)
    audit = "\n".join(repr(r) for r in await sigil.store.audit_records())
    assert caplog.records, "the flow should have logged something"
    for name, value in secrets.items():
        assert value not in logged, f"{name} reached the log"
        assert value not in audit, f"{name} reached the audit trail"


def test_reprs_hide_secrets_sad6() -> None:
    now = datetime.now(UTC)
    request = SignatureRequest(
        request_id="r",
        client_id="c",
        user_id="u",
        credential_id="k",
        hash_algorithm="2.16.840.1.101.3.4.2.1",
        hashes=("aGFzaA==",),
        display_text="t",
        nonce="secret-nonce",
        verification_code="1234",
        state=RequestState.SIGNED,
        created_at=now,
        updated_at=now,
        expires_at=now,
        signatures=("c2lnbmF0dXJl",),
    )
    client = Client(client_id="c", name="n", api_key_hash="secret-hash", created_at=now)
    settings = make_settings(Path("/nonexistent"), hsm_pin="secret-pin")
    issued = IssuedCode(code="secret-code", expires_at=now)

    for value, secret in (
        (request, "secret-nonce"),
        (client, "secret-hash"),
        (settings, "secret-pin"),
        (settings.hsm_config(), "secret-pin"),
        (issued, "secret-code"),
    ):
        assert secret not in repr(value)
