"""Columns of the SQLite store and their conversion to and from records.

Times are INTEGER microseconds since the Unix epoch (UTC), so ``<`` and
``>`` in SQL compare instants; lists and mappings are compact JSON text; a
credential's chain is a JSON list of base64 DER certificates.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from store._rules import check_aware
from store.models import (
    AuditRecord,
    Client,
    Credential,
    Device,
    DeviceStatus,
    RequestState,
    SignatureRequest,
    User,
    UserFactors,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

REQUEST_COLUMNS = (
    "request_id, client_id, user_id, credential_id, hash_algorithm, hashes,"
    " display_text, nonce, verification_code, state, created_at, updated_at,"
    " expires_at, idempotency_key, signatures, sad_digest, error, finished_at,"
    " kind, num_signatures, used_hashes, signed_hashes,"
    " authorized_until"
)
USER_COLUMNS = (
    "user_id, display_name, key_algorithm, created_by, created_at, second_factor"
)
FACTOR_COLUMNS = "user_id, pin_hash, totp_secret, totp_last_step"
DEVICE_COLUMNS = (
    "device_id, user_id, public_key_jwk, push_subscription, status, name, created_at"
)
CREDENTIAL_COLUMNS = (
    "credential_id, user_id, key_id, key_algorithm, certificate_der, chain_der,"
    " status, created_at"
)
AUDIT_COLUMNS = "seq, time, event, actor, subject, outcome, details, prev_hash, hash"


def to_us(value: datetime, name: str) -> int:
    return (check_aware(value, name) - _EPOCH) // _MICROSECOND


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def credential_params(credential: Credential) -> tuple[Any, ...]:
    chain = [base64.b64encode(der).decode("ascii") for der in credential.chain_der]
    return (
        credential.credential_id,
        credential.user_id,
        credential.key_id,
        credential.key_algorithm,
        bytes(credential.certificate_der),
        to_json(chain),
        credential.status,
        to_us(credential.created_at, "created_at"),
    )


def request_params(request: SignatureRequest) -> tuple[Any, ...]:
    signatures = request.signatures
    finished_at = request.finished_at
    return (
        request.request_id,
        request.client_id,
        request.user_id,
        request.credential_id,
        request.hash_algorithm,
        to_json(list(request.hashes)),
        request.display_text,
        request.nonce,
        request.verification_code,
        RequestState(request.state).value,
        to_us(request.created_at, "created_at"),
        to_us(request.updated_at, "updated_at"),
        to_us(request.expires_at, "expires_at"),
        request.idempotency_key,
        None if signatures is None else to_json(list(signatures)),
        request.sad_digest,
        request.error,
        None if finished_at is None else to_us(finished_at, "finished_at"),
        request.kind,
        request.num_signatures,
        to_json(list(request.used_hashes)),
        to_json(list(request.signed_hashes)),
        _opt_us(request.authorized_until, "authorized_until"),
    )


def _opt_us(value: datetime | None, name: str) -> int | None:
    return None if value is None else to_us(value, name)


def _opt_time(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


# How each request field is written to its column (see request_changes).
_REQUEST_ENCODERS: dict[str, Any] = {
    "state": lambda v: RequestState(v).value,
    "updated_at": lambda v: to_us(v, "updated_at"),
    "finished_at": lambda v: _opt_us(v, "finished_at"),
    "authorized_until": lambda v: _opt_us(v, "authorized_until"),
    "signatures": lambda v: None if v is None else to_json(list(v)),
    "used_hashes": lambda v: to_json(list(v)),
    "signed_hashes": lambda v: to_json(list(v)),
    "sad_digest": lambda v: v,
    "error": lambda v: v,
}


def request_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """Column values for changes given by SignatureRequest attribute name."""
    unknown = sorted(set(changes) - set(_REQUEST_ENCODERS))
    if unknown:
        raise ValueError(f"cannot change {unknown} of a request")
    return {name: _REQUEST_ENCODERS[name](value) for name, value in changes.items()}


def factors_from_row(row: sqlite3.Row) -> UserFactors:
    return UserFactors(
        user_id=row["user_id"],
        pin_hash=row["pin_hash"],
        totp_secret=row["totp_secret"],
        totp_last_step=row["totp_last_step"],
    )


def factors_params(factors: UserFactors) -> tuple[Any, ...]:
    return (
        factors.user_id,
        factors.pin_hash,
        factors.totp_secret,
        factors.totp_last_step,
    )


def request_from_row(row: sqlite3.Row) -> SignatureRequest:
    signatures = row["signatures"]
    finished_at = row["finished_at"]
    return SignatureRequest(
        request_id=row["request_id"],
        client_id=row["client_id"],
        user_id=row["user_id"],
        credential_id=row["credential_id"],
        hash_algorithm=row["hash_algorithm"],
        hashes=tuple(json.loads(row["hashes"])),
        display_text=row["display_text"],
        nonce=row["nonce"],
        verification_code=row["verification_code"],
        state=RequestState(row["state"]),
        created_at=from_us(row["created_at"]),
        updated_at=from_us(row["updated_at"]),
        expires_at=from_us(row["expires_at"]),
        idempotency_key=row["idempotency_key"],
        signatures=None if signatures is None else tuple(json.loads(signatures)),
        sad_digest=row["sad_digest"],
        error=row["error"],
        finished_at=None if finished_at is None else from_us(finished_at),
        kind=row["kind"],
        num_signatures=row["num_signatures"],
        used_hashes=tuple(json.loads(row["used_hashes"])),
        signed_hashes=tuple(json.loads(row["signed_hashes"])),
        authorized_until=_opt_time(row["authorized_until"]),
    )


def client_from_row(row: sqlite3.Row) -> Client:
    return Client(
        client_id=row["client_id"],
        name=row["name"],
        api_key_hash=row["api_key_hash"],
        created_at=from_us(row["created_at"]),
        revoked_at=(
            from_us(row["revoked_at"]) if row["revoked_at"] is not None else None
        ),
    )


def user_from_row(row: sqlite3.Row) -> User:
    return User(
        user_id=row["user_id"],
        display_name=row["display_name"],
        key_algorithm=row["key_algorithm"],
        created_at=from_us(row["created_at"]),
        created_by=row["created_by"],
        second_factor=row["second_factor"],
    )


def device_from_row(row: sqlite3.Row) -> Device:
    push = row["push_subscription"]
    return Device(
        device_id=row["device_id"],
        user_id=row["user_id"],
        public_key_jwk=json.loads(row["public_key_jwk"]),
        push_subscription=None if push is None else json.loads(push),
        status=DeviceStatus(row["status"]),
        name=row["name"],
        created_at=from_us(row["created_at"]),
    )


def credential_from_row(row: sqlite3.Row) -> Credential:
    return Credential(
        credential_id=row["credential_id"],
        user_id=row["user_id"],
        key_id=row["key_id"],
        key_algorithm=row["key_algorithm"],
        certificate_der=bytes(row["certificate_der"]),
        chain_der=tuple(base64.b64decode(c) for c in json.loads(row["chain_der"])),
        status=row["status"],
        created_at=from_us(row["created_at"]),
    )


def audit_from_row(row: sqlite3.Row) -> AuditRecord:
    return AuditRecord(
        seq=row["seq"],
        time=from_us(row["time"]),
        event=row["event"],
        actor=row["actor"],
        subject=row["subject"],
        outcome=row["outcome"],
        details=json.loads(row["details"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )
