"""A CSC authorisation ends with its phone, and lives a bounded time."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sam.activation import AUTHORISATION_MAX_SPAN
from server.enrolment import revoke_device
from tests.conftest_server import EnrolFactory, Sigil, sha256
from tests.csc_client import CscClient

DOCS = [sha256(b"page one"), sha256(b"page two")]


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    # Approvals that may be spent for 50 minutes.
    return {"csc_sad_lifetime": 3000}


async def _approved(csc: CscClient, enrol: EnrolFactory, credential_id: str) -> str:
    started = await csc.start(credential_id, DOCS)
    enrol.expected[started["handle"]] = started["verificationCode"]  # type: ignore[attr-defined]
    status, answer = await csc.finish(started["handle"])
    assert status == 200, answer
    return str(answer["SAD"])


async def test_revoking_the_phone_ends_its_unspent_authorisations(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    csc = CscClient(sigil.url, sigil.rp.api_key, sigil.session, 2)
    user = await enrol()
    sad = await _approved(csc, enrol, user.credential_id)
    status, _ = await csc.sign(user.credential_id, sad, DOCS[:1])
    assert status == 200

    revoked = await revoke_device(sigil.store, user.phone.device_id or "")

    assert revoked is not None and revoked[1] == 1
    status, answer = await csc.sign(user.credential_id, sad, DOCS[1:])
    assert (status, answer["error_description"]) == (400, "Invalid parameter SAD")
    records = await sigil.store.audit_records(limit=1000)
    assert [r.outcome for r in records if r.event == "request.cancelled"] == [
        "device_revoked"
    ]


async def test_extensions_stop_an_hour_after_the_authorisation_was_asked_for(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    csc = CscClient(sigil.url, sigil.rp.api_key, sigil.session, 2)
    user = await enrol()
    sad = await _approved(csc, enrol, user.credential_id)
    found = await sigil.store.get_request(sad.split(".")[0])
    assert found is not None
    near_the_end = found.created_at + AUTHORISATION_MAX_SPAN - timedelta(minutes=12)
    sigil.service.sam._clock = lambda: near_the_end  # type: ignore[method-assign]

    extended = await csc.ok(
        "credentials/extendTransaction",
        {"credentialID": user.credential_id, "SAD": sad},
    )
    status, answer = await csc.call(
        "credentials/extendTransaction",
        {"credentialID": user.credential_id, "SAD": extended["SAD"]},
    )

    assert (status, answer["error"]) == (400, "invalid_request")
    assert answer["error_description"].startswith("Invalid parameter SAD")
    status, _ = await csc.sign(user.credential_id, extended["SAD"], DOCS[:1])
    assert status == 200
    records = await sigil.store.audit_records(limit=1000)
    assert [r.event for r in records].count("sad.extended") == 1
