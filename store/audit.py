"""The hash chain of the audit trail (AUD-3, EN 419241-1 SRG_AA).

Each record's hash is the hex SHA-256 of the previous record's hash followed
by the canonical JSON of the record's own fields. Every backend computes the
hash here, so a trail written by one can be verified against any other.

Canonical JSON: keys sorted, no whitespace, UTF-8 without escaping, no NaN
or infinity, and the time as RFC 3339 UTC with microseconds
(``2025-01-02T03:04:05.000006Z``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from store.models import AuditRecord

__all__ = [
    "GENESIS_HASH",
    "ChainVerification",
    "canonical_json",
    "chain_hash",
    "format_time",
    "verify_chain",
]

GENESIS_HASH = "0" * 64


def format_time(time: datetime) -> str:
    """Render an aware datetime as RFC 3339 UTC with microseconds."""
    if time.tzinfo is None or time.utcoffset() is None:
        raise ValueError("audit time must be timezone-aware")
    return time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> str:
    """Serialise ``value`` the one way every backend hashes it."""
    try:
        return json.dumps(
            value,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"not canonical JSON: {e}") from e


def chain_hash(
    *,
    prev_hash: str,
    seq: int,
    time: datetime,
    event: str,
    actor: str,
    subject: str,
    outcome: str,
    details: Mapping[str, Any],
) -> str:
    """Return the hex SHA-256 that links one record to its predecessor."""
    body = canonical_json(
        {
            "seq": seq,
            "time": format_time(time),
            "event": event,
            "actor": actor,
            "subject": subject,
            "outcome": outcome,
            "details": dict(details),
        }
    )
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainVerification:
    """The outcome of checking a run of audit records."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None


def verify_chain(
    records: Iterable[AuditRecord], *, start_prev_hash: str = GENESIS_HASH
) -> ChainVerification:
    """Check sequence numbers, links and hashes of consecutive records.

    From the genesis hash the run must start at ``seq`` 1; from any other
    ``start_prev_hash`` (a checkpoint) it starts wherever the first record
    says, and every later record must follow without a gap.
    """
    prev_hash = start_prev_hash
    expected_seq: int | None = 1 if start_prev_hash == GENESIS_HASH else None
    checked = 0

    for record in records:
        if expected_seq is not None and record.seq != expected_seq:
            return ChainVerification(
                ok=False,
                checked=checked,
                first_bad_seq=record.seq,
                reason=f"expected seq {expected_seq}, found {record.seq}",
            )

        if record.prev_hash != prev_hash:
            return ChainVerification(
                ok=False,
                checked=checked,
                first_bad_seq=record.seq,
                reason="prev_hash does not match the previous record",
            )

        try:
            computed = chain_hash(
                prev_hash=record.prev_hash,
                seq=record.seq,
                time=record.time,
                event=record.event,
                actor=record.actor,
                subject=record.subject,
                outcome=record.outcome,
                details=record.details,
            )
        except ValueError as e:
            return ChainVerification(
                ok=False,
                checked=checked,
                first_bad_seq=record.seq,
                reason=f"record cannot be hashed: {e}",
            )
        if computed != record.hash:
            return ChainVerification(
                ok=False,
                checked=checked,
                first_bad_seq=record.seq,
                reason="hash does not match the record's contents",
            )

        checked += 1
        prev_hash = record.hash
        expected_seq = record.seq + 1

    return ChainVerification(ok=True, checked=checked)
