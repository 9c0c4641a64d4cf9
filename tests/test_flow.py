"""The whole job over real HTTP on loopback: request, encrypted push to the
simulated phone, approval, SAM check and SoftHSM2 signature, on every store
backend (STATE-2)."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from mobile_stub import Policy
from tests.conftest_server import EnrolFactory, Sigil, sha256
from tests.conftest_store import BACKENDS, Backend, resolve_backend


@pytest.fixture(params=BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> Backend:
    return resolve_backend(request, request.param)


def _verify(
    cert: x509.Certificate,
    signature: bytes,
    digest: bytes,
    algorithm: hashes.HashAlgorithm,
) -> None:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, digest, ec.ECDSA(Prehashed(algorithm)))
    else:
        assert isinstance(key, rsa.RSAPublicKey)
        key.verify(signature, digest, padding.PKCS1v15(), Prehashed(algorithm))


async def _sign(
    sigil: Sigil,
    enrol: EnrolFactory,
    *,
    key_algorithm: str,
    documents: list[bytes],
    hash_algorithm: str = "SHA-256",
) -> tuple[dict[str, object], list[bytes]]:
    user = await enrol(key_algorithm=key_algorithm)
    hasher = {"SHA-256": hashes.SHA256, "SHA-384": hashes.SHA384}[hash_algorithm]
    digests = []
    for document in documents:
        h = hashes.Hash(hasher())
        h.update(document)
        digests.append(h.finalize())
    created = await sigil.rp.request_signature(
        user_id=user.user_id,
        hashes=digests,
        display_text="Sign the employment contract",
        hash_algorithm=hash_algorithm,
    )
    enrol.expected[created["request_id"]] = created["verification_code"]  # type: ignore[attr-defined]
    await user.phone.wait_for(created["request_id"])
    result = await sigil.rp.wait_final(created["request_id"], timeout=20)
    return result, digests


async def test_whole_flow_signs_one_hash_and_chains_to_the_development_ca(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    result, digests = await _sign(
        sigil, enrol, key_algorithm="EC-P256", documents=[b"contract body"]
    )

    assert result["state"] == "signed"
    chain = [
        x509.load_der_x509_certificate(base64.b64decode(c))
        for c in result["certificate_chain"]  # type: ignore[union-attr]
    ]
    leaf, ca = chain
    assert ca.public_bytes(serialization_der()) == await sigil.rp.ca_certificate()
    leaf.verify_directly_issued_by(ca)
    (signature,) = result["signatures"]  # type: ignore[misc]
    _verify(leaf, base64.b64decode(signature), digests[0], hashes.SHA256())
    assert result["signature_algorithm"] == "1.2.840.10045.4.3.2"


def serialization_der():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


async def test_push_is_encrypted_and_carries_only_request_id_and_nonce_push1(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol()
    created = await sigil.rp.request_signature(
        user_id=user.user_id, hashes=[sha256(b"x")], display_text="Pay 10 EUR"
    )
    enrol.expected[created["request_id"]] = created["verification_code"]  # type: ignore[attr-defined]
    await user.phone.wait_for(created["request_id"])

    (push,) = user.phone.pushes
    assert set(push.message) == {"rid", "nonce"}
    assert push.message["rid"] == created["request_id"]
    assert 0 < int(push.ttl) <= 120
    assert push.urgency == "high"
    assert push.topic and len(push.topic) <= 32


async def test_rsa_credential_signs_several_hashes_in_order(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    documents = [b"first", b"second", b"third"]
    result, digests = await _sign(
        sigil, enrol, key_algorithm="RSA-2048", documents=documents
    )

    assert result["state"] == "signed"
    leaf = x509.load_der_x509_certificate(
        base64.b64decode(result["certificate_chain"][0])  # type: ignore[index]
    )
    signatures = result["signatures"]
    assert isinstance(signatures, list) and len(signatures) == 3
    for signature, digest in zip(signatures, digests, strict=True):
        _verify(leaf, base64.b64decode(signature), digest, hashes.SHA256())


async def test_p384_credential_signs_sha384_hashes(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    result, digests = await _sign(
        sigil,
        enrol,
        key_algorithm="EC-P384",
        documents=[b"report"],
        hash_algorithm="SHA-384",
    )

    assert result["state"] == "signed"
    leaf = x509.load_der_x509_certificate(
        base64.b64decode(result["certificate_chain"][0])  # type: ignore[index]
    )
    _verify(
        leaf, base64.b64decode(result["signatures"][0]), digests[0], hashes.SHA384()
    )  # type: ignore[index]
    assert result["signature_algorithm"] == "1.2.840.10045.4.3.3"


async def test_rejection_ends_in_rejected(sigil: Sigil, enrol: EnrolFactory) -> None:
    user = await enrol(policy=Policy.REJECT)
    created = await sigil.ask(user)
    shown = await user.phone.wait_for(created["request_id"])

    result = await sigil.rp.wait_final(created["request_id"], timeout=10)
    assert shown.outcome[0] == 200
    assert result["state"] == "rejected"
    assert "signatures" not in result


async def test_wrong_verification_code_ends_in_failed(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.WRONG_CODE)
    created = await sigil.ask(user)
    enrol.expected[created["request_id"]] = created["verification_code"]  # type: ignore[attr-defined]
    shown = await user.phone.wait_for(created["request_id"])

    result = await sigil.rp.get(created["request_id"])
    assert shown.picked != created["verification_code"]
    assert shown.outcome[0] == 409
    assert result["state"] == "failed"
    assert result["error"] == "wrong_verification_code"


async def test_cancellation_ends_in_cancelled_and_refuses_later_approval(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created = await sigil.ask(user)
    await user.phone.wait_for(created["request_id"])

    cancelled = await sigil.rp.cancel(created["request_id"])
    details = await user.phone.fetch(created["request_id"])
    sad = user.phone.make_sad(details, vc=created["verification_code"])
    status, body = await user.phone.approve(created["request_id"], sad)

    assert cancelled["state"] == "cancelled"
    assert status == 409
    assert body["error"] == "request_not_pending"
    assert (await sigil.rp.get(created["request_id"]))["state"] == "cancelled"
    status, body = await sigil.rp.call(
        "POST", f"/api/v1/signature-requests/{created['request_id']}/cancel"
    )
    assert status == 409


@pytest.mark.parametrize("settings_overrides", [{"min_ttl": 1}])
async def test_expiry_ends_in_expired_and_refuses_approval(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created = await sigil.rp.request_signature(
        user_id=user.user_id, hashes=[sha256(b"x")], display_text="Sign?", ttl_seconds=1
    )
    await user.phone.wait_for(created["request_id"])
    details = await user.phone.fetch(created["request_id"])
    sad = user.phone.make_sad(details, vc=created["verification_code"])

    result = await sigil.rp.wait_final(created["request_id"], timeout=5)
    status, body = await user.phone.approve(created["request_id"], sad)

    assert result["state"] == "expired"
    assert status == 409
    assert body["error"] == "request_expired"


async def test_long_poll_returns_when_the_phone_approves(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created = await sigil.ask(user)
    rid = created["request_id"]
    await user.phone.wait_for(rid)
    poll = asyncio.create_task(sigil.rp.get(rid, wait=20))
    await asyncio.sleep(0.2)
    assert not poll.done()

    details = await user.phone.fetch(rid)
    status, _ = await user.phone.approve(
        rid, user.phone.make_sad(details, vc=created["verification_code"])
    )
    result = await asyncio.wait_for(poll, 5)

    assert status == 200
    assert result["state"] == "signed"


async def test_idempotent_retry_returns_the_same_request_and_pushes_once(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    first = await sigil.rp.request_signature(
        user_id=user.user_id,
        hashes=[sha256(b"x")],
        display_text="Sign?",
        idempotency_key="order-42",
    )
    status, second = await sigil.rp.call(
        "POST",
        "/api/v1/signature-requests",
        {
            "user_id": user.user_id,
            "hash_algorithm": "SHA-256",
            "hashes": [base64.b64encode(sha256(b"x")).decode()],
            "display_text": "Sign?",
            "idempotency_key": "order-42",
        },
    )
    status_other, other = await sigil.rp.call(
        "POST",
        "/api/v1/signature-requests",
        {
            "user_id": user.user_id,
            "hash_algorithm": "SHA-256",
            "hashes": [base64.b64encode(sha256(b"y")).decode()],
            "display_text": "Sign?",
            "idempotency_key": "order-42",
        },
    )
    await user.phone.wait_for(first["request_id"])
    await asyncio.sleep(0.2)

    assert status == 200
    assert second["request_id"] == first["request_id"]
    assert status_other == 409 and other["error"] == "idempotency_key_reused"
    assert len(user.phone.pushes) == 1


async def test_relying_app_sees_only_its_own_requests_auth1(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created = await sigil.ask(user)
    other = await sigil.new_client("Other Bank")

    status_get, body_get = await other.call(
        "GET", f"/api/v1/signature-requests/{created['request_id']}"
    )
    status_cancel, _ = await other.call(
        "POST", f"/api/v1/signature-requests/{created['request_id']}/cancel"
    )

    assert status_get == 404 and body_get["error"] == "not_found"
    assert status_cancel == 404
    assert (await sigil.rp.get(created["request_id"]))["state"] == "pending"


async def test_every_step_leaves_a_valid_audit_chain_aud3(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    from store.audit import verify_chain

    await _sign(sigil, enrol, key_algorithm="EC-P256", documents=[b"a"])
    records = await sigil.store.audit_records()
    events = [r.event for r in records]

    assert verify_chain(records).ok
    for event in (
        "device.enrolled",
        "key.generated",
        "request.created",
        "sad.accepted",
        "key.use",
    ):
        assert event in events
    dumped = json.dumps([r.details for r in records])
    assert "activation_code" not in dumped
