"""Every way a SAD can be wrong is refused with its own error and leaves an
audit record (SAD-3, SAD-4, AUD-1)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mobile_stub import DROP, Policy, SimulatedPhone
from store import DeviceStatus, RequestState
from tests.conftest_server import EnrolFactory, Enrolled, Sigil, sha256


async def _pending(
    sigil: Sigil, user: Enrolled, *, text: str = "Sign?", n: int = 1
) -> tuple[dict[str, Any], dict[str, Any]]:
    created = await sigil.rp.request_signature(
        user_id=user.user_id,
        hashes=[sha256(bytes([i])) for i in range(n)],
        display_text=text,
    )
    await user.phone.wait_for(created["request_id"])
    details = await user.phone.fetch(created["request_id"])
    return created, details


async def _refusals(sigil: Sigil, request_id: str) -> list[str]:
    return [
        r.outcome
        for r in await sigil.store.audit_records()
        if r.event == "sad.refused" and r.subject == f"request:{request_id}"
    ]


async def _assert_refused(
    sigil: Sigil,
    phone: SimulatedPhone,
    request_id: str,
    sad: str,
    *,
    status: int,
    error: str,
) -> None:
    got_status, body = await phone.approve(request_id, sad)
    assert (got_status, body["error"]) == (status, error), body
    assert set(body) == {"error", "error_description"}
    assert f"refused:{error}" in await _refusals(sigil, request_id)
    if error != "sad_already_used":
        assert (await sigil.rp.get(request_id))["state"] == "pending"


async def test_replayed_sad_is_refused_sad4(sigil: Sigil, enrol: EnrolFactory) -> None:
    user = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, user)
    sad = user.phone.make_sad(details, vc=created["verification_code"])
    status, _ = await user.phone.approve(created["request_id"], sad)
    assert status == 200

    await _assert_refused(
        sigil,
        user.phone,
        created["request_id"],
        sad,
        status=409,
        error="sad_already_used",
    )
    assert (await sigil.rp.get(created["request_id"]))["state"] == "signed"


async def test_sad_with_a_hash_added_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, user, n=2)
    extra = details["hashes"] + [details["hashes"][0]]
    sad = user.phone.make_sad(
        details,
        vc=created["verification_code"],
        overrides={"hashes": extra, "numSignatures": 3},
    )
    await _assert_refused(
        sigil, user.phone, created["request_id"], sad, status=400, error="hash_mismatch"
    )


async def test_sad_with_a_hash_removed_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, user, n=2)
    sad = user.phone.make_sad(
        details,
        vc=created["verification_code"],
        overrides={"hashes": details["hashes"][:1], "numSignatures": 1},
    )
    await _assert_refused(
        sigil, user.phone, created["request_id"], sad, status=400, error="hash_mismatch"
    )


async def test_sad_with_a_hash_changed_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    import base64

    user = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, user)
    changed = base64.b64encode(sha256(b"another document")).decode()
    sad = user.phone.make_sad(
        details, vc=created["verification_code"], overrides={"hashes": [changed]}
    )
    await _assert_refused(
        sigil, user.phone, created["request_id"], sad, status=400, error="hash_mismatch"
    )


async def test_sad_claiming_more_signatures_than_hashes_is_refused_sad5(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, user)
    sad = user.phone.make_sad(
        details, vc=created["verification_code"], overrides={"numSignatures": 2}
    )
    await _assert_refused(
        sigil,
        user.phone,
        created["request_id"],
        sad,
        status=400,
        error="signature_count_mismatch",
    )


async def test_sad_for_another_users_credential_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    alice = await enrol(policy=Policy.SILENT)
    bob = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, alice)
    sad = alice.phone.make_sad(
        details,
        vc=created["verification_code"],
        overrides={"cid": bob.credential_id},
    )
    await _assert_refused(
        sigil,
        alice.phone,
        created["request_id"],
        sad,
        status=400,
        error="credential_mismatch",
    )


async def test_sad_from_another_users_device_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    alice = await enrol(policy=Policy.SILENT)
    bob = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, alice)
    sad = bob.phone.make_sad(details, vc=created["verification_code"])

    # Bob's phone cannot even see Alice's request ...
    status, body = await bob.phone.approve(created["request_id"], sad)
    assert (status, body["error"]) == (404, "not_found")
    # ... and Bob's SAD carried by Alice's phone is refused by the SAM.
    await _assert_refused(
        sigil,
        alice.phone,
        created["request_id"],
        sad,
        status=403,
        error="device_not_of_signer",
    )


async def test_sad_made_for_another_request_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    first, _ = await _pending(sigil, user)
    second, second_details = await _pending(sigil, user)
    sad = user.phone.make_sad(second_details, vc=second["verification_code"])

    await _assert_refused(
        sigil,
        user.phone,
        first["request_id"],
        sad,
        status=400,
        error="request_mismatch",
    )


async def test_sad_with_another_requests_nonce_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    first, first_details = await _pending(sigil, user)
    _, second_details = await _pending(sigil, user)
    sad = user.phone.make_sad(
        first_details,
        vc=first["verification_code"],
        overrides={"nonce": second_details["nonce"]},
    )
    await _assert_refused(
        sigil, user.phone, first["request_id"], sad, status=400, error="nonce_mismatch"
    )


async def test_sad_for_another_display_text_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, user, text="Pay 10 EUR")
    shown = dict(details, display_text="Pay 10000 EUR")
    sad = user.phone.make_sad(shown, vc=created["verification_code"])
    await _assert_refused(
        sigil,
        user.phone,
        created["request_id"],
        sad,
        status=400,
        error="display_text_mismatch",
    )


async def test_expired_sad_is_refused(sigil: Sigil, enrol: EnrolFactory) -> None:
    user = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, user)
    sad = user.phone.make_sad(
        details,
        vc=created["verification_code"],
        iat=int(time.time()) - 200,
        lifetime=100,
    )
    await _assert_refused(
        sigil, user.phone, created["request_id"], sad, status=400, error="sad_expired"
    )


async def test_sad_issued_in_the_future_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, user)
    sad = user.phone.make_sad(
        details, vc=created["verification_code"], iat=int(time.time()) + 600
    )
    await _assert_refused(
        sigil, user.phone, created["request_id"], sad, status=400, error="sad_stale"
    )


async def test_sad_for_another_audience_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, user)
    sad = user.phone.make_sad(
        details, vc=created["verification_code"], overrides={"aud": "other-server"}
    )
    await _assert_refused(
        sigil,
        user.phone,
        created["request_id"],
        sad,
        status=400,
        error="audience_mismatch",
    )


async def test_sad_missing_a_claim_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, user)
    sad = user.phone.make_sad(
        details, vc=created["verification_code"], overrides={"nonce": DROP}
    )
    await _assert_refused(
        sigil, user.phone, created["request_id"], sad, status=400, error="invalid_sad"
    )


async def test_sad_from_an_unknown_device_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, user)
    stranger = user.phone.clone_with_new_key(policy=Policy.SILENT)
    assert stranger.device_id != user.phone.device_id
    sad = stranger.make_sad(details, vc=created["verification_code"])
    await _assert_refused(
        sigil,
        user.phone,
        created["request_id"],
        sad,
        status=403,
        error="unknown_device",
    )


async def test_sad_from_a_revoked_device_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, user)
    code = await sigil.operator_code(user.user_id)
    async with SimulatedPhone(sigil.url, policy=Policy.SILENT) as second:
        await second.enrol(code)
        assert second.device_id is not None
        sad = second.make_sad(details, vc=created["verification_code"])
        await sigil.store.set_device_status(second.device_id, DeviceStatus.REVOKED)

        # The revoked phone's own calls are refused at the door ...
        status, body = await second.approve(created["request_id"], sad)
        assert (status, body["error"]) == (403, "device_revoked")
    # ... and its SAD carried by another phone is refused by the SAM.
    await _assert_refused(
        sigil,
        user.phone,
        created["request_id"],
        sad,
        status=403,
        error="device_revoked",
    )


async def test_badly_signed_sad_is_refused(sigil: Sigil, enrol: EnrolFactory) -> None:
    user = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, user)
    sad = user.phone.make_sad(details, vc=created["verification_code"])
    head, payload, signature = sad.split(".")
    flipped = ("A" if signature[10] != "A" else "B").join(
        (signature[:10], signature[11:])
    )
    await _assert_refused(
        sigil,
        user.phone,
        created["request_id"],
        f"{head}.{payload}.{flipped}",
        status=403,
        error="invalid_sad_signature",
    )


async def test_sad_that_is_not_a_jws_is_refused(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created, _ = await _pending(sigil, user)
    await _assert_refused(
        sigil,
        user.phone,
        created["request_id"],
        "not.a.jws",
        status=400,
        error="invalid_sad",
    )


async def test_twenty_concurrent_approvals_give_one_set_of_signatures_sad4(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created, details = await _pending(sigil, user, n=2)
    sad = user.phone.make_sad(details, vc=created["verification_code"])

    answers = await asyncio.gather(
        *(user.phone.approve(created["request_id"], sad) for _ in range(20))
    )

    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] + [409] * 19
    assert {b["error"] for s, b in answers if s == 409} == {"sad_already_used"}
    request = await sigil.store.get_request(created["request_id"])
    assert request is not None and request.state is RequestState.SIGNED
    assert request.signatures is not None and len(request.signatures) == 2
    key_uses = [
        r
        for r in await sigil.store.audit_records()
        if r.event == "key.use" and r.details.get("request") == created["request_id"]
    ]
    assert len(key_uses) == 1
