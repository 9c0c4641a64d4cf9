"""The token, not the database, says what a key is for: a credential record
pointed at another key (the CA's, say) makes the SAM sign nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from hsm import HashAlg, KeyPurposeMismatch, KeyType, SignMechanism
from mobile_stub import Policy
from server.ca import CA_KEY_LABEL
from tests.conftest_server import EnrolFactory, Sigil, sha256


async def test_credential_pointing_at_the_ca_key_signs_nothing_sad5(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    ca_key_id = sigil.service.ca.key.key_id

    # Someone with write access to the database swaps the key id.
    def tamper() -> None:
        with sqlite3.connect(Path(sigil.settings.store)) as db:
            db.execute(
                "UPDATE credentials SET key_id = ? WHERE credential_id = ?",
                (ca_key_id, user.credential_id),
            )

    await asyncio.to_thread(tamper)
    created = await sigil.ask(user)
    rid = created["request_id"]
    await user.phone.wait_for(rid)
    details = await user.phone.fetch(rid)
    status, body = await user.phone.approve(
        rid, user.phone.make_sad(details, vc=created["verification_code"])
    )

    assert (status, body["error"]) == (500, "signing_failed")
    result = await sigil.rp.get(rid)
    assert result["state"] == "failed"
    assert "signatures" not in result


async def test_sign_digest_refuses_a_key_with_another_label(sigil: Sigil) -> None:
    key = await sigil.hsm.generate_key(KeyType.EC_P256, label="user:alice")

    with pytest.raises(KeyPurposeMismatch):
        await sigil.hsm.sign_digest(
            key.key_id,
            sha256(b"x"),
            mechanism=SignMechanism.ECDSA,
            hash_alg=HashAlg.SHA256,
            label=CA_KEY_LABEL,
        )
    signature = await sigil.hsm.sign_digest(
        key.key_id,
        sha256(b"x"),
        mechanism=SignMechanism.ECDSA,
        hash_alg=HashAlg.SHA256,
        label="user:alice",
    )
    assert key.label == "user:alice" and signature
