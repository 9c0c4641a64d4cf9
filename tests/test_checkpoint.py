"""Signed audit checkpoints catch what the hash chain alone cannot: a chain
rewritten and hashed anew by someone with write access (AUD-3)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from hsm import Hsm, KeyType
from sam.checkpoint import (
    CHECKPOINT_EVENT,
    ensure_audit_key,
    verify_checkpoints,
    write_checkpoint,
)
from store import AuditRecord
from store.audit import GENESIS_HASH, chain_hash, verify_chain
from store.sqlite import SqliteStore
from tests.conftest_server import EnrolFactory, Sigil


def _rechain(records: list[AuditRecord]) -> list[AuditRecord]:
    """What a forger does after editing: renumber and hash everything anew."""
    out: list[AuditRecord] = []
    prev = GENESIS_HASH
    for seq, record in enumerate(records, start=1):
        moved = replace(record, seq=seq, prev_hash=prev)
        digest = chain_hash(
            prev_hash=prev,
            seq=seq,
            time=moved.time,
            event=moved.event,
            actor=moved.actor,
            subject=moved.subject,
            outcome=moved.outcome,
            details=moved.details,
        )
        out.append(replace(moved, hash=digest))
        prev = digest
    return out


async def _trail(tmp_path: Path, hsm: Hsm) -> tuple[SqliteStore, str, bytes]:
    store = SqliteStore(tmp_path / "audit.db")
    await store.open()
    key_id = await ensure_audit_key(hsm, store)
    public_key = (await hsm.get_key(key_id)).public_key_der
    now = datetime.now(UTC)
    for i in range(6):
        await store.append_audit(
            time=now, event="key.use", actor="sam", subject=f"r{i}", outcome="success"
        )
    return store, key_id, public_key


async def test_checkpoint_signs_the_head_and_verifies_aud3(
    tmp_path: Path, hsm: Hsm
) -> None:
    store, key_id, public_key = await _trail(tmp_path, hsm)
    try:
        first = await write_checkpoint(store, hsm, key_id, now=datetime.now(UTC))
        again = await write_checkpoint(store, hsm, key_id, now=datetime.now(UTC))
        records = list(await store.audit_records())
    finally:
        await store.close()

    assert first is not None and first.event == CHECKPOINT_EVENT
    assert first.details["seq"] == 6
    assert again is None  # the head is a checkpoint already
    report = verify_checkpoints(records, public_key)
    assert (report.ok, report.checkpoints, report.covered_seq) == (True, 1, 6)


async def test_rewritten_and_rehashed_chain_fails_its_checkpoint_aud3(
    tmp_path: Path, hsm: Hsm
) -> None:
    store, key_id, public_key = await _trail(tmp_path, hsm)
    try:
        await write_checkpoint(store, hsm, key_id, now=datetime.now(UTC))
        records = list(await store.audit_records())
    finally:
        await store.close()

    # Remove the record of one key use, then repair the chain.
    forged = _rechain([r for r in records if r.subject != "r2"])

    assert verify_chain(forged).ok
    report = verify_checkpoints(forged, public_key)
    assert not report.ok
    assert "does not match" in (report.problem or "")


async def test_checkpoint_with_a_forged_signature_fails_aud3(
    tmp_path: Path, hsm: Hsm
) -> None:
    store, key_id, _ = await _trail(tmp_path, hsm)
    try:
        await write_checkpoint(store, hsm, key_id, now=datetime.now(UTC))
        records = list(await store.audit_records())
    finally:
        await store.close()
    seal = records[-1]
    other = await hsm.generate_key(KeyType.EC_P256, label="forger")
    forged_details = dict(seal.details, key=other.key_id)

    report = verify_checkpoints(
        [*records[:-1], replace(seal, details=forged_details)],
        (await hsm.get_key(other.key_id)).public_key_der,
    )

    assert not report.ok
    assert "bad signature" in (report.problem or "")


async def test_server_seals_the_trail_and_the_operator_can_check_it(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol()
    created = await sigil.ask(user)
    enrol.expected[created["request_id"]] = created["verification_code"]  # type: ignore[attr-defined]
    await sigil.rp.wait_final(created["request_id"], timeout=10)

    await sigil.service.checkpoint()
    records = list(await sigil.store.audit_records())
    key_id = sigil.service.audit_key_id
    assert key_id is not None
    public_key = (await sigil.hsm.get_key(key_id)).public_key_der

    report = verify_checkpoints(records, public_key)
    assert report.ok and report.covered_seq == records[-1].seq - 1
    assert any(r.event == "key.use" for r in records)
