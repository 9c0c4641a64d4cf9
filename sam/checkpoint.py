"""Signed checkpoints of the audit trail (AUD-3, EN 419241-1 SRG_AA).

The hash chain shows that no record was changed relative to its neighbours,
but whoever can write the database could rewrite the whole chain and hash it
anew. A checkpoint closes that gap: it is itself an audit record, holding the
sequence number and hash of the record before it and an ECDSA signature over
both by an audit key that never leaves the HSM. Records up to the last
checkpoint cannot be changed, removed or reordered without breaking a
signature that nobody without the HSM can remake.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from hsm import HashAlg, Hsm, KeyType, SignMechanism
from store import AuditRecord, Store

__all__ = [
    "AUDIT_KEY_LABEL",
    "CHECKPOINT_EVENT",
    "CheckpointReport",
    "ensure_audit_key",
    "verify_checkpoints",
    "write_checkpoint",
]

log = logging.getLogger(__name__)

CHECKPOINT_EVENT = "audit.checkpoint"
_KEY_SETTING = "audit.key_id"
AUDIT_KEY_LABEL = "sigil-audit"


def _statement(seq: int, chain_hash: str) -> bytes:
    """The exact bytes a checkpoint signs: what it covers, and for what."""
    text = f"sigil audit checkpoint\nseq={seq}\nhash={chain_hash}\n"
    return hashlib.sha256(text.encode("ascii")).digest()


async def ensure_audit_key(hsm: Hsm, store: Store) -> str:
    """The audit key's id, making the key in the HSM on first use."""
    key_id = await store.get_setting(_KEY_SETTING)
    if key_id is not None:
        return key_id
    key = await hsm.generate_key(KeyType.EC_P256, label=AUDIT_KEY_LABEL)
    await store.put_setting(_KEY_SETTING, key.key_id)
    log.info("audit checkpoint key created")
    return key.key_id


async def audit_key_id(store: Store) -> str | None:
    return await store.get_setting(_KEY_SETTING)


async def write_checkpoint(
    store: Store, hsm: Hsm, key_id: str, *, now: datetime
) -> AuditRecord | None:
    """Sign the head of the chain; ``None`` when the head is a checkpoint."""
    head = await _head(store)
    if head is None or head.event == CHECKPOINT_EVENT:
        return None
    signature = await hsm.sign_digest(
        key_id,
        _statement(head.seq, head.hash),
        mechanism=SignMechanism.ECDSA,
        hash_alg=HashAlg.SHA256,
        label=AUDIT_KEY_LABEL,
    )
    return await store.append_audit(
        time=now,
        event=CHECKPOINT_EVENT,
        actor="server",
        subject=f"audit:{head.seq}",
        outcome="success",
        details={
            "seq": head.seq,
            "hash": head.hash,
            "key": key_id,
            "signature": base64.b64encode(signature).decode("ascii"),
        },
    )


async def _head(store: Store) -> AuditRecord | None:
    last: AuditRecord | None = None
    after = 0
    while page := await store.audit_records(after_seq=after, limit=1000):
        last = page[-1]
        after = last.seq
    return last


@dataclass(frozen=True, slots=True)
class CheckpointReport:
    ok: bool
    checkpoints: int
    covered_seq: int
    problem: str | None = None


def verify_checkpoints(
    records: Sequence[AuditRecord], public_key_der: bytes
) -> CheckpointReport:
    """Check every checkpoint's signature and that it matches the chain."""
    key = serialization.load_der_public_key(public_key_der)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return CheckpointReport(False, 0, 0, "the audit key is not an EC key")
    by_seq = {r.seq: r for r in records}
    covered = 0
    count = 0
    for record in records:
        if record.event != CHECKPOINT_EVENT:
            continue
        details = record.details
        seq, chain_hash, signature = (
            details.get("seq"),
            details.get("hash"),
            details.get("signature"),
        )
        if not (
            isinstance(seq, int)
            and isinstance(chain_hash, str)
            and isinstance(signature, str)
        ):
            return CheckpointReport(
                False, count, covered, f"checkpoint {record.seq} is malformed"
            )
        target = by_seq.get(seq)
        if target is None or target.hash != chain_hash:
            return CheckpointReport(
                False, count, covered, f"checkpoint {record.seq} does not match {seq}"
            )
        try:
            key.verify(
                base64.b64decode(signature),
                _statement(seq, chain_hash),
                ec.ECDSA(Prehashed(hashes.SHA256())),
            )
        except (InvalidSignature, ValueError):
            return CheckpointReport(
                False, count, covered, f"checkpoint {record.seq} has a bad signature"
            )
        count += 1
        covered = max(covered, seq)
    return CheckpointReport(True, count, covered)
