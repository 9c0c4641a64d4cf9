"""The async store interface that every backend implements.

Each method that changes a signature request is one atomic conditional
update (STATE-1): it names the states it may leave and either moves the
request or returns ``None`` without touching it. The same contract tests
(``tests/store_contract.py``) run against every backend (STATE-2).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from store._rules import Changes, extend_change, reserve_change, signatures_change
from store.models import (
    ActivationCode,
    AuditEvent,
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

__all__ = ["Store"]

# A TOTP step is remembered as used this long; the last accepted step, kept
# with the factors, guards beyond that.
_TOTP_MEMORY = timedelta(minutes=10)


class Store(abc.ABC):
    """Persistence for users, devices, credentials, requests and audit."""

    # -- life cycle -------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if it is missing."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- key/value settings (CA certificate, VAPID public key, ...) -------
    @abc.abstractmethod
    async def get_setting(self, key: str) -> str | None: ...

    @abc.abstractmethod
    async def put_setting(self, key: str, value: str) -> None: ...

    # -- relying applications ---------------------------------------------
    @abc.abstractmethod
    async def add_client(self, client: Client) -> None:
        """Raise ``DuplicateError`` when the id or key hash exists."""

    @abc.abstractmethod
    async def client_by_key_hash(self, api_key_hash: str) -> Client | None: ...

    @abc.abstractmethod
    async def revoke_client(self, client_id: str, *, now: datetime) -> Client | None:
        """Revoke a relying app's API key for good (the first revocation time
        stays); ``None`` if there is no such client."""

    @abc.abstractmethod
    async def list_clients(self) -> list[Client]: ...

    # -- users and activation codes -------------------------------------
    @abc.abstractmethod
    async def add_user(self, user: User) -> None:
        """Raise ``DuplicateError`` when the user id exists."""

    @abc.abstractmethod
    async def get_user(self, user_id: str) -> User | None: ...

    @abc.abstractmethod
    async def list_users(self) -> list[User]: ...

    # -- second factors (AUTH-3) ----------------------------------------
    @abc.abstractmethod
    async def get_factors(self, user_id: str) -> UserFactors | None: ...

    @abc.abstractmethod
    async def put_factors(self, factors: UserFactors) -> None:
        """Create or replace the user's factors."""

    @abc.abstractmethod
    async def raise_totp_step(self, user_id: str, step: int) -> None:
        """Remember ``step`` as the last accepted TOTP step unless a later
        one is already remembered."""

    async def accept_totp_step(self, user_id: str, step: int, *, now: datetime) -> bool:
        """Accept a TOTP time step once: never a step at or before the last
        accepted one, and of two callers with the same step only one."""
        factors = await self.get_factors(user_id)
        if factors is None or factors.totp_secret is None:
            return False
        if factors.totp_last_step is not None and step <= factors.totp_last_step:
            return False
        if not await self.use_once(
            f"totp:{user_id}", str(step), expires_at=now + _TOTP_MEMORY
        ):
            return False
        await self.raise_totp_step(user_id, step)
        return True

    @abc.abstractmethod
    async def add_activation_code(self, code: ActivationCode) -> None:
        """Store a code; it replaces any earlier code of the same user, so a
        user has at most one live activation code."""

    @abc.abstractmethod
    async def consume_activation_code(
        self, code_hash: str, *, now: datetime
    ) -> ActivationCode | None:
        """Atomically use a code once; ``None`` if unknown, used or expired."""

    # -- devices ------------------------------------------------------------
    @abc.abstractmethod
    async def add_device(self, device: Device) -> None:
        """Raise ``DuplicateError`` when the device id exists."""

    @abc.abstractmethod
    async def get_device(self, device_id: str) -> Device | None: ...

    @abc.abstractmethod
    async def list_devices(self, *, user_id: str | None = None) -> list[Device]: ...

    @abc.abstractmethod
    async def set_device_status(
        self, device_id: str, status: DeviceStatus
    ) -> Device | None: ...

    @abc.abstractmethod
    async def clear_push_subscription(self, device_id: str, endpoint: str) -> bool:
        """Drop the subscription if it still has this endpoint (PUSH-2)."""

    # -- credentials ------------------------------------------------------
    @abc.abstractmethod
    async def add_credential(self, credential: Credential) -> None: ...

    @abc.abstractmethod
    async def get_credential(self, credential_id: str) -> Credential | None: ...

    @abc.abstractmethod
    async def list_credentials(
        self, *, user_id: str | None = None
    ) -> list[Credential]: ...

    # -- single-use values (device call ids, enrolment challenges) -----------
    @abc.abstractmethod
    async def use_once(self, scope: str, value: str, *, expires_at: datetime) -> bool:
        """Record ``value`` in ``scope``; ``False`` if it was already there.

        Entries past ``expires_at`` may be purged, but a value is never
        accepted twice while it has not expired.
        """

    @abc.abstractmethod
    async def clear_use_once(self, scope: str) -> int:
        """Forget every value of ``scope`` (PIN attempt slots after a right
        PIN or an administrator's unlock); return how many."""

    @abc.abstractmethod
    async def put_challenge(self, challenge: str, *, expires_at: datetime) -> None:
        """Remember a server-issued challenge until it expires."""

    @abc.abstractmethod
    async def take_challenge(self, challenge: str, *, now: datetime) -> bool:
        """Atomically remove a live challenge; ``False`` if unknown/expired."""

    # -- signature requests -------------------------------------------------
    @abc.abstractmethod
    async def create_request(self, request: SignatureRequest) -> SignatureRequest:
        """Insert a request, or return the existing one for the same
        ``(client_id, idempotency_key)`` when that key is set."""

    @abc.abstractmethod
    async def get_request(self, request_id: str) -> SignatureRequest | None: ...

    @abc.abstractmethod
    async def list_requests(
        self,
        *,
        user_id: str | None = None,
        client_id: str | None = None,
        states: Collection[RequestState] | None = None,
        limit: int = 100,
    ) -> list[SignatureRequest]:
        """Newest first."""

    @abc.abstractmethod
    async def transition(
        self,
        request_id: str,
        *,
        from_states: Collection[RequestState],
        to_state: RequestState,
        now: datetime,
        not_expired: bool = False,
        updates: Mapping[str, Any] | None = None,
        audit: AuditEvent | None = None,
    ) -> SignatureRequest | None:
        """Move a request in one conditional update.

        The move happens only if the request's state is in ``from_states``
        and, when ``not_expired`` is set, ``expires_at > now``. ``updates``
        may set ``signatures``, ``sad_digest`` and ``error``. A final state
        sets ``finished_at = now``. Returns the new record or ``None``.

        ``audit``, when given, is appended (at time ``now``) only if the move
        happens, and atomically with it where the backend can.
        """

    @abc.abstractmethod
    async def update_request(
        self,
        request_id: str,
        change: Callable[[SignatureRequest], Changes | None],
        *,
        now: datetime,
        audit: AuditEvent | None = None,
    ) -> SignatureRequest | None:
        """Apply ``change`` to the request in one atomic step.

        ``change`` sees the current record and gives the new values of some
        fields (by attribute name), or ``None`` to leave it as it is; the
        result is stored only if nobody changed the request in between.
        ``audit`` is appended with the change, as in ``transition``.
        """

    # -- CSC authorisations (store._rules) --------------------------------
    async def reserve_hashes(
        self, request_id: str, *, hashes: Sequence[str], now: datetime
    ) -> SignatureRequest | None:
        """Spend ``hashes`` of a live CSC authorisation, each at most once
        and never past its number of signatures; ``None`` if not allowed."""
        return await self.update_request(
            request_id, lambda r: reserve_change(r, hashes, now), now=now
        )

    async def add_signatures(
        self,
        request_id: str,
        *,
        hashes: Sequence[str],
        signatures: Sequence[str],
        now: datetime,
        audit: AuditEvent | None = None,
    ) -> SignatureRequest | None:
        """Keep the signatures of spent hashes; the last ends the request."""
        return await self.update_request(
            request_id,
            lambda r: signatures_change(r, hashes, signatures, now),
            now=now,
            audit=audit,
        )

    async def extend_authorization(
        self,
        request_id: str,
        *,
        until: datetime,
        now: datetime,
        audit: AuditEvent | None = None,
    ) -> SignatureRequest | None:
        """Let a live CSC authorisation be spent until ``until``."""
        return await self.update_request(
            request_id, lambda r: extend_change(r, until, now), now=now, audit=audit
        )

    @abc.abstractmethod
    async def expire_due(self, *, now: datetime) -> list[str]:
        """Move pending requests past ``expires_at``, and CSC authorisations
        past ``authorized_until``, to expired; return their ids."""

    @abc.abstractmethod
    async def fail_stale_approved(
        self, *, before: datetime, now: datetime
    ) -> list[str]:
        """Move relying-party requests approved and last updated before
        ``before`` to failed (crash recovery, STATE-3); return their ids.
        CSC authorisations stay approved until spent or expired."""

    @abc.abstractmethod
    async def purge_finished(self, *, before: datetime) -> int:
        """Delete final requests finished before ``before``."""

    # -- audit trail (AUD-2, AUD-3) ----------------------------------------
    @abc.abstractmethod
    async def append_audit(
        self,
        *,
        time: datetime,
        event: str,
        actor: str,
        subject: str,
        outcome: str,
        details: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        """Append one record, chained to the previous by its hash."""

    @abc.abstractmethod
    async def audit_records(
        self, *, after_seq: int = 0, limit: int = 1000
    ) -> Sequence[AuditRecord]: ...

    async def flush_audit(self, *, now: datetime) -> int:
        """Append audit records of moves whose record could not be appended
        at once (a backend without atomic moves and appends); return how
        many. Backends that commit both together have nothing to do."""
        return 0

    # -- changes made by any process ------------------------------------
    def change_feed(self) -> AsyncIterator[str] | None:
        """Ids of requests as any process changes them, or ``None`` when the
        backend cannot tell; long polls then re-read at a bounded interval."""
        return None
