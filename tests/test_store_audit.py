"""The audit hash chain itself (AUD-3), independent of any backend."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from store.audit import GENESIS_HASH, chain_hash, format_time, verify_chain
from store.models import AuditRecord

T0 = datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


def build_chain(count: int, *, prev_hash: str = GENESIS_HASH) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    for seq in range(1, count + 1):
        fields: dict[str, Any] = {
            "seq": seq,
            "time": T0 + timedelta(seconds=seq),
            "event": "key.used",
            "actor": "sam",
            "subject": f"request:r{seq}",
            "outcome": "success",
            "details": {"n": seq},
        }
        digest = chain_hash(prev_hash=prev_hash, **fields)
        records.append(AuditRecord(prev_hash=prev_hash, hash=digest, **fields))
        prev_hash = digest
    return records


def test_chain_hash_matches_the_documented_canonical_form() -> None:
    """AUD-3: both backends hash exactly this byte string."""
    body = (
        '{"actor":"device:dev-1","details":{"n":2,"ü":"ß"},"event":"sad.accepted",'
        '"outcome":"success","seq":1,"subject":"request:r1",'
        '"time":"2025-01-02T03:04:05.000006Z"}'
    )
    expected = hashlib.sha256((GENESIS_HASH + body).encode("utf-8")).hexdigest()

    digest = chain_hash(
        prev_hash=GENESIS_HASH,
        seq=1,
        time=T0,
        event="sad.accepted",
        actor="device:dev-1",
        subject="request:r1",
        outcome="success",
        details={"ü": "ß", "n": 2},
    )

    assert digest == expected


def test_time_is_hashed_as_the_same_instant_in_any_zone() -> None:
    elsewhere = T0.astimezone(timezone(timedelta(hours=-5)))

    assert format_time(elsewhere) == "2025-01-02T03:04:05.000006Z"


def test_naive_time_cannot_be_hashed() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(datetime(2025, 1, 2))


def test_intact_chain_verifies() -> None:
    result = verify_chain(build_chain(5))

    assert result.ok
    assert result.checked == 5
    assert result.first_bad_seq is None


def test_empty_chain_verifies() -> None:
    assert verify_chain([]).ok


@pytest.mark.parametrize(
    "change",
    [
        {"outcome": "failure"},
        {"details": {"n": 99}},
        {"time": T0},
        {"actor": "someone else"},
    ],
    ids=["outcome", "details", "time", "actor"],
)
def test_edited_record_is_detected(change: dict[str, Any]) -> None:
    """AUD-3: changing any field breaks that record's hash."""
    records = build_chain(5)
    records[2] = dataclasses.replace(records[2], **change)

    result = verify_chain(records)

    assert not result.ok
    assert result.first_bad_seq == 3
    assert result.checked == 2


def test_rehashed_record_breaks_the_next_link() -> None:
    records = build_chain(5)
    forged = dataclasses.replace(records[2], outcome="failure")
    fields = {
        k: getattr(forged, k)
        for k in ("seq", "time", "event", "actor", "subject", "outcome", "details")
    }
    records[2] = dataclasses.replace(
        forged, hash=chain_hash(prev_hash=forged.prev_hash, **fields)
    )

    result = verify_chain(records)

    assert not result.ok
    assert result.first_bad_seq == 4
    assert result.reason is not None
    assert "prev_hash" in result.reason


def test_removed_record_is_detected() -> None:
    records = build_chain(5)
    del records[1]

    result = verify_chain(records)

    assert not result.ok
    assert result.first_bad_seq == 3


def test_chain_from_genesis_must_start_at_seq_one() -> None:
    result = verify_chain(build_chain(5)[1:])

    assert not result.ok
    assert result.first_bad_seq == 2


def test_chain_verifies_from_a_checkpoint() -> None:
    records = build_chain(5)

    result = verify_chain(records[2:], start_prev_hash=records[1].hash)

    assert result.ok
    assert result.checked == 3


def test_chain_from_the_wrong_checkpoint_fails() -> None:
    records = build_chain(5)

    result = verify_chain(records[2:], start_prev_hash=records[0].hash)

    assert not result.ok
    assert result.first_bad_seq == 3
