"""Records kept by the store.

Every record is a frozen dataclass: the store hands out values, never live
objects, so a caller cannot change state except through the store's atomic
operations (STATE-1). Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "CSC",
    "RP",
    "ActivationCode",
    "AuditEvent",
    "AuditRecord",
    "Client",
    "Credential",
    "Device",
    "DeviceStatus",
    "RequestState",
    "SignatureRequest",
    "User",
    "UserFactors",
]

#: Kinds of signature request. A relying-party request is signed as soon as
#: the phone approves. A CSC authorisation is only authorised by the
#: approval; the CSC client then spends it with signatures/signHash calls.
RP = "rp"
CSC = "csc"


class RequestState(enum.StrEnum):
    """Life cycle of a signature request (STATE-1)."""

    PENDING = "pending"
    APPROVED = "approved"
    SIGNED = "signed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self not in (RequestState.PENDING, RequestState.APPROVED)


class DeviceStatus(enum.StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    display_name: str
    key_algorithm: str
    created_at: datetime
    # "operator", or "client:<id>" of the relying app that created the user.
    created_by: str = "operator"
    # The second factor the signer's policy asks for (AUTH-3): "none",
    # "pin" or "totp".
    second_factor: str = "none"


@dataclass(frozen=True, slots=True)
class UserFactors:
    """A signer's second factors (AUTH-3); secrets never show in a repr."""

    user_id: str
    pin_hash: str | None = field(default=None, repr=False)
    # TODO(totp-at-rest): the TOTP secret is stored as it is; wrapping it
    # under an HSM key would keep a database dump from minting codes.
    totp_secret: str | None = field(default=None, repr=False)
    # The last TOTP time step accepted: a code is never accepted twice.
    totp_last_step: int | None = None


@dataclass(frozen=True, slots=True)
class ActivationCode:
    """A one-time enrolment code, kept only as a hash (SAD-6)."""

    code_hash: str
    user_id: str
    expires_at: datetime
    created_at: datetime
    # "operator", or "client:<id>" of the relying app that issued it.
    issued_by: str = "operator"


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    user_id: str
    public_key_jwk: dict[str, Any]
    push_subscription: dict[str, Any] | None
    status: DeviceStatus
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Credential:
    credential_id: str
    user_id: str
    key_id: str
    key_algorithm: str
    certificate_der: bytes = field(repr=False)
    chain_der: tuple[bytes, ...] = field(repr=False)
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Client:
    """A relying application; its API key is kept only as a hash."""

    client_id: str
    name: str
    api_key_hash: str = field(repr=False)
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SignatureRequest:
    request_id: str
    client_id: str
    user_id: str
    credential_id: str
    hash_algorithm: str
    hashes: tuple[str, ...]
    display_text: str
    nonce: str = field(repr=False)
    verification_code: str
    state: RequestState
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    idempotency_key: str | None = None
    signatures: tuple[str, ...] | None = field(default=None, repr=False)
    sad_digest: str | None = None
    error: str | None = None
    finished_at: datetime | None = None
    kind: str = RP
    # CSC authorisations: how many signatures the approval allows, the
    # hashes already spent (each once), the hashes signed with their
    # signatures in the same order, and until when it can be spent.
    num_signatures: int = 0
    used_hashes: tuple[str, ...] = ()
    signed_hashes: tuple[str, ...] = ()
    authorized_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """An audit record to append, before it has a place in the chain."""

    event: str
    actor: str
    subject: str
    outcome: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One link of the hash-chained audit trail (AUD-2, AUD-3)."""

    seq: int
    time: datetime
    event: str
    actor: str
    subject: str
    outcome: str
    details: dict[str, Any]
    prev_hash: str
    hash: str
