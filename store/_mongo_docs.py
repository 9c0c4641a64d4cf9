"""Documents of the MongoDB store and their conversion to and from records.

A record's natural id is its document's ``_id``, except for single-use
entries, whose ``_id`` is fresh each time (see store.mongodb). Instants are Int64
microseconds since the Unix epoch (UTC), as in the SQLite store, because
BSON dates keep only milliseconds and the contract tests expect a record
back exactly as it was stored. The few BSON dates that exist (``ttl_at``,
``purge_at``) serve TTL indexes only and are never read back.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bson.int64 import Int64

from store._rules import check_aware
from store.models import (
    RP,
    ActivationCode,
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

Doc = dict[str, Any]


def to_us(value: datetime, name: str) -> Int64:
    return Int64((check_aware(value, name) - _EPOCH) // _MICROSECOND)


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def ttl_date(value: datetime) -> datetime:
    """A BSON date for a TTL index (milliseconds are enough there)."""
    return check_aware(value, "ttl").astimezone(UTC)


def idempotency_id(request: SignatureRequest) -> str:
    """The value of the always-set unique ``idem`` field.

    A relying app's idempotency key is unique per app; a request without one
    takes its own id, so the unique index needs no partial filter (which
    FerretDB lacks) and no two unkeyed requests collide.
    """
    if request.idempotency_key is None:
        return f"id:{request.request_id}"
    return f"key:{request.client_id}:{request.idempotency_key}"


def idempotency_lookup(client_id: str, key: str) -> str:
    return f"key:{client_id}:{key}"


def client_doc(client: Client) -> Doc:
    return {
        "_id": client.client_id,
        "name": client.name,
        "api_key_hash": client.api_key_hash,
        "created_at": to_us(client.created_at, "created_at"),
        "revoked_at": None,
    }


def client_from_doc(doc: Doc) -> Client:
    revoked = doc.get("revoked_at")
    return Client(
        client_id=doc["_id"],
        name=doc["name"],
        api_key_hash=doc["api_key_hash"],
        created_at=from_us(doc["created_at"]),
        revoked_at=None if revoked is None else from_us(revoked),
    )


def user_doc(user: User) -> Doc:
    return {
        "_id": user.user_id,
        "display_name": user.display_name,
        "key_algorithm": user.key_algorithm,
        "created_by": user.created_by,
        "created_at": to_us(user.created_at, "created_at"),
        "second_factor": user.second_factor,
    }


def user_from_doc(doc: Doc) -> User:
    return User(
        user_id=doc["_id"],
        display_name=doc["display_name"],
        key_algorithm=doc["key_algorithm"],
        created_by=doc["created_by"],
        created_at=from_us(doc["created_at"]),
        second_factor=doc.get("second_factor", "none"),
    )


def code_doc(code: ActivationCode) -> Doc:
    # A fresh _id for every code (see MongoStore.add_activation_code).
    return {
        "user_id": code.user_id,
        "code_hash": code.code_hash,
        "expires_at": to_us(code.expires_at, "expires_at"),
        "created_at": to_us(code.created_at, "created_at"),
        "issued_by": code.issued_by,
        "ttl_at": ttl_date(code.expires_at),
    }


def code_from_doc(doc: Doc) -> ActivationCode:
    return ActivationCode(
        code_hash=doc["code_hash"],
        user_id=doc["user_id"],
        expires_at=from_us(doc["expires_at"]),
        created_at=from_us(doc["created_at"]),
        issued_by=doc["issued_by"],
    )


def device_doc(device: Device) -> Doc:
    push = device.push_subscription
    return {
        "_id": device.device_id,
        "user_id": device.user_id,
        "public_key_jwk": dict(device.public_key_jwk),
        "push_subscription": None if push is None else dict(push),
        "status": DeviceStatus(device.status).value,
        "name": device.name,
        "created_at": to_us(device.created_at, "created_at"),
    }


def device_from_doc(doc: Doc) -> Device:
    push = doc.get("push_subscription")
    return Device(
        device_id=doc["_id"],
        user_id=doc["user_id"],
        public_key_jwk=dict(doc["public_key_jwk"]),
        push_subscription=None if push is None else dict(push),
        status=DeviceStatus(doc["status"]),
        name=doc["name"],
        created_at=from_us(doc["created_at"]),
    )


def credential_doc(credential: Credential) -> Doc:
    return {
        "_id": credential.credential_id,
        "user_id": credential.user_id,
        "key_id": credential.key_id,
        "key_algorithm": credential.key_algorithm,
        "certificate_der": bytes(credential.certificate_der),
        "chain_der": [bytes(der) for der in credential.chain_der],
        "status": credential.status,
        "created_at": to_us(credential.created_at, "created_at"),
    }


def credential_from_doc(doc: Doc) -> Credential:
    return Credential(
        credential_id=doc["_id"],
        user_id=doc["user_id"],
        key_id=doc["key_id"],
        key_algorithm=doc["key_algorithm"],
        certificate_der=bytes(doc["certificate_der"]),
        chain_der=tuple(bytes(der) for der in doc["chain_der"]),
        status=doc["status"],
        created_at=from_us(doc["created_at"]),
    )


def request_doc(request: SignatureRequest) -> Doc:
    signatures = request.signatures
    finished_at = request.finished_at
    return {
        "_id": request.request_id,
        "version": 0,
        "idem": idempotency_id(request),
        "client_id": request.client_id,
        "user_id": request.user_id,
        "credential_id": request.credential_id,
        "hash_algorithm": request.hash_algorithm,
        "hashes": list(request.hashes),
        "display_text": request.display_text,
        "nonce": request.nonce,
        "verification_code": request.verification_code,
        "state": RequestState(request.state).value,
        "created_at": to_us(request.created_at, "created_at"),
        "updated_at": to_us(request.updated_at, "updated_at"),
        "expires_at": to_us(request.expires_at, "expires_at"),
        "idempotency_key": request.idempotency_key,
        "signatures": None if signatures is None else list(signatures),
        "sad_digest": request.sad_digest,
        "error": request.error,
        "finished_at": (
            None if finished_at is None else to_us(finished_at, "finished_at")
        ),
        "kind": request.kind,
        "num_signatures": request.num_signatures,
        "used_hashes": list(request.used_hashes),
        "signed_hashes": list(request.signed_hashes),
        "authorized_until": opt_us(request.authorized_until, "authorized_until"),
    }


def opt_us(value: datetime | None, name: str) -> Int64 | None:
    return None if value is None else to_us(value, name)


def opt_time(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def request_sets(changes: dict[str, Any]) -> Doc:
    """Document fields for changes given by SignatureRequest attribute name."""
    sets: Doc = {}
    for name, value in changes.items():
        if name == "state":
            sets[name] = RequestState(value).value
        elif name in ("updated_at", "finished_at", "authorized_until"):
            sets[name] = opt_us(value, name)
        elif name in ("signatures", "used_hashes", "signed_hashes"):
            sets[name] = None if value is None else list(value)
        elif name in ("sad_digest", "error"):
            sets[name] = value
        else:
            raise ValueError(f"cannot change {name} of a request")
    return sets


def factors_doc(factors: UserFactors) -> Doc:
    return {
        "_id": factors.user_id,
        "pin_hash": factors.pin_hash,
        "totp_secret": factors.totp_secret,
        "totp_last_step": factors.totp_last_step,
    }


def factors_from_doc(doc: Doc) -> UserFactors:
    return UserFactors(
        user_id=doc["_id"],
        pin_hash=doc.get("pin_hash"),
        totp_secret=doc.get("totp_secret"),
        totp_last_step=doc.get("totp_last_step"),
    )


def request_from_doc(doc: Doc) -> SignatureRequest:
    signatures = doc.get("signatures")
    finished_at = doc.get("finished_at")
    return SignatureRequest(
        request_id=doc["_id"],
        client_id=doc["client_id"],
        user_id=doc["user_id"],
        credential_id=doc["credential_id"],
        hash_algorithm=doc["hash_algorithm"],
        hashes=tuple(doc["hashes"]),
        display_text=doc["display_text"],
        nonce=doc["nonce"],
        verification_code=doc["verification_code"],
        state=RequestState(doc["state"]),
        created_at=from_us(doc["created_at"]),
        updated_at=from_us(doc["updated_at"]),
        expires_at=from_us(doc["expires_at"]),
        idempotency_key=doc.get("idempotency_key"),
        signatures=None if signatures is None else tuple(signatures),
        sad_digest=doc.get("sad_digest"),
        error=doc.get("error"),
        finished_at=None if finished_at is None else from_us(finished_at),
        kind=doc.get("kind", RP),
        num_signatures=int(doc.get("num_signatures") or 0),
        used_hashes=tuple(doc.get("used_hashes") or ()),
        signed_hashes=tuple(doc.get("signed_hashes") or ()),
        authorized_until=opt_time(doc.get("authorized_until")),
    )


def audit_from_doc(doc: Doc, details: Any) -> AuditRecord:
    return AuditRecord(
        seq=int(doc["_id"]),
        time=from_us(doc["time"]),
        event=doc["event"],
        actor=doc["actor"],
        subject=doc["subject"],
        outcome=doc["outcome"],
        details=details,
        prev_hash=doc["prev_hash"],
        hash=doc["hash"],
    )
