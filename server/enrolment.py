"""Users and one-time activation codes: who may enrol which device.

The relying-party API and the operator's command line both create users and
issue codes through these functions, so that one set of rules holds for
both.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hsm import KeyType
from sam.factors import POLICIES
from server.errors import ApiError
from store import (
    CSC,
    ActivationCode,
    AuditEvent,
    Client,
    Device,
    DeviceStatus,
    DuplicateError,
    RequestState,
    Store,
    User,
)

__all__ = [
    "IssuedCode",
    "activation_code_hash",
    "add_user",
    "issue_activation_code",
    "revoke_device",
]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def activation_code_hash(code: str) -> str:
    """Hash of the code's canonical form: case, spaces and dashes do not count."""
    canonical = "".join(c for c in code.upper() if c.isalnum())
    return hashlib.sha256(("activation\n" + canonical).encode("utf-8")).hexdigest()


def _new_activation_code() -> str:
    # 20 characters of a 32-letter alphabet without look-alikes: 100 bits.
    alphabet = "ABCDEFGHJKMNPQRSTVWXYZ0123456789"
    raw = "".join(secrets.choice(alphabet) for _ in range(20))
    return "-".join(raw[i : i + 5] for i in range(0, 20, 5))


@dataclass(frozen=True, slots=True)
class IssuedCode:
    code: str = field(repr=False)
    expires_at: datetime


async def add_user(
    store: Store,
    *,
    display_name: str,
    key_algorithm: str,
    user_id: str | None,
    created_by: str,
    second_factor: str = "none",
) -> User:
    """Create a user; the relying app that did it may enrol their first device.

    ``second_factor`` is the signer's policy (AUTH-3): ``"none"``, ``"pin"``
    or ``"totp"``; the factor itself is set up at enrolment.
    """
    # The name becomes the certificate's common name: at most 64 characters
    # (RFC 5280, ub-common-name), and SoftHSM2 and most CAs count bytes.
    if not display_name.strip() or len(display_name.encode("utf-8")) > 64:
        raise ApiError(
            400, "invalid_request", "display_name must be 1 to 64 bytes in UTF-8"
        )
    if second_factor not in POLICIES:
        raise ApiError(
            400, "invalid_request", "second_factor must be none, pin or totp"
        )
    user = User(
        user_id=user_id or str(uuid.uuid4()),
        display_name=display_name,
        key_algorithm=str(KeyType(key_algorithm)),
        created_at=_utcnow(),
        created_by=created_by,
        second_factor=second_factor,
    )
    try:
        await store.add_user(user)
    except DuplicateError as e:
        raise ApiError(409, "user_exists", "a user with this id exists") from e
    await store.append_audit(
        time=_utcnow(),
        event="user.created",
        actor=created_by,
        subject=f"user:{user.user_id}",
        outcome="success",
        details={"second_factor": second_factor},
    )
    return user


async def issue_activation_code(
    store: Store, user_id: str, *, ttl: int, client: Client | None
) -> IssuedCode:
    """A one-time enrolment code; it replaces the user's earlier one.

    A relying app may enrol only the first device of a user it created. A
    further device for an enrolled user needs the operator (``client`` is
    ``None``): otherwise any relying app could add its own phone to someone
    else's signing key.
    """
    user = await store.get_user(user_id)
    actor = "operator" if client is None else f"client:{client.client_id}"
    if user is None or (client is not None and user.created_by != actor):
        raise ApiError(404, "unknown_user", "no such user")
    if client is not None and (
        await store.list_devices(user_id=user_id)
        or await store.list_credentials(user_id=user_id)
    ):
        raise ApiError(
            409,
            "user_already_enrolled",
            "the user has a device; another device needs the operator",
        )
    code = _new_activation_code()
    now = _utcnow()
    expires = now + timedelta(seconds=ttl)
    await store.add_activation_code(
        ActivationCode(
            code_hash=activation_code_hash(code),
            user_id=user_id,
            expires_at=expires,
            created_at=now,
            issued_by=actor,
        )
    )
    await store.append_audit(
        time=now,
        event="activation_code.issued",
        actor=actor,
        subject=f"user:{user_id}",
        outcome="success",
    )
    return IssuedCode(code=code, expires_at=expires)


async def revoke_device(
    store: Store, device_id: str, *, actor: str = "operator"
) -> tuple[Device, int] | None:
    """Revoke a device for good, and end the signer's CSC authorisations
    that are approved but not spent yet: a lost phone's approvals stop
    counting at once. Returns the device and how many authorisations ended,
    or ``None`` when there is no such device."""
    device = await store.set_device_status(device_id, DeviceStatus.REVOKED)
    if device is None:
        return None
    now = datetime.now(UTC)
    await store.append_audit(
        time=now,
        event="device.revoked",
        actor=actor,
        subject=f"device:{device_id}",
        outcome="success",
    )
    ended = 0
    # TODO(revocation-paging): a signer with more than 1000 live CSC
    # authorisations keeps the rest until they expire.
    for request in await store.list_requests(
        user_id=device.user_id, states=(RequestState.APPROVED,), limit=1000
    ):
        if request.kind != CSC:
            continue
        moved = await store.transition(
            request.request_id,
            from_states=(RequestState.APPROVED,),
            to_state=RequestState.CANCELLED,
            now=now,
            updates={"error": "device_revoked"},
            audit=AuditEvent(
                "request.cancelled",
                actor=actor,
                subject=f"request:{request.request_id}",
                outcome="device_revoked",
            ),
        )
        ended += moved is not None
    return device, ended
