"""Second factors of a signer (AUTH-3): a PIN or a TOTP, as policy asks.

A signer's policy (``User.second_factor``) is ``"none"``, ``"pin"`` or
``"totp"``. The PIN is kept only as an Argon2id hash (argon2-cffi's
``PasswordHasher`` defaults: time cost 3, 64 MiB, 4 lanes; some tens of
milliseconds a hash, always off the event loop). The TOTP is RFC 6238 with
pyotp: SHA-1, six digits, 30 s steps; a code is accepted for its step or one
step either side, and a step is accepted once.

Lockout without read-modify-write: each attempt first takes one of
``max_pin_tries`` attempt slots with the store's atomic ``use_once``
(``pin:<user>`` 1..N). With no free slot the attempt is refused as locked,
and nothing is verified. A right PIN clears the slots; a wrong one leaves
its slot taken. Each slot expires ``pin_lock`` after it was taken, which is
the timeout unlock; :meth:`SecondFactors.unlock` is the administrator's.
Concurrent attempts can never verify more than N wrong PINs. TOTP codes are
rate limited the same way (``otp:<user>``).

Nothing here logs or audits a PIN, a code, a hash or a secret (SAD-6).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from store import Store, User, UserFactors

__all__ = [
    "POLICIES",
    "FactorRefused",
    "SecondFactors",
    "is_valid_pin",
]

log = logging.getLogger(__name__)

Factor = Literal["pin", "otp"]
Reason = Literal[
    "missing", "invalid", "locked", "invalid_format", "unexpected", "not_enrolled"
]

#: The second-factor policies a signer can have.
POLICIES: Final = ("none", "pin", "totp")

_PIN = re.compile(r"[0-9]{4,12}")
_OTP = re.compile(r"[0-9]{6,8}")
# One TOTP step either side of the current one (clock drift, slow typing).
_TOTP_WINDOW: Final = 1


def _utcnow() -> datetime:
    return datetime.now(UTC)


def is_valid_pin(pin: str) -> bool:
    """4 to 12 ASCII digits."""
    return _PIN.fullmatch(pin) is not None


class FactorRefused(Exception):
    """A second factor was missing, wrong or locked.

    Carries no PIN, code or secret: its text is safe to log and to send.
    ``error`` and ``description`` are the API's error code and sentence.
    """

    def __init__(
        self, factor: Factor, reason: Reason, *, tries_left: int | None = None
    ) -> None:
        self.factor: Factor = factor
        self.reason: Reason = reason
        self.tries_left = tries_left
        super().__init__(f"{factor} refused: {reason}")

    def __repr__(self) -> str:
        return f"FactorRefused(factor={self.factor!r}, reason={self.reason!r})"

    @property
    def error(self) -> str:
        """The API's error code for this refusal."""
        if self.reason == "missing":
            return "second_factor_required"
        if self.reason == "not_enrolled":
            return "second_factor_not_enrolled"
        if self.reason == "locked":
            return f"{self.factor}_locked"
        if self.reason == "invalid":
            return f"invalid_{self.factor}"
        return "invalid_request"

    @property
    def description(self) -> str:
        """A sentence for people; never the value sent."""
        what = "PIN" if self.factor == "pin" else "one-time code"
        if self.reason == "missing":
            return f"this signer's policy asks for a {what} with the approval"
        if self.reason == "invalid":
            text = (
                "the PIN is wrong"
                if self.factor == "pin"
                else "the one-time code is wrong or was used already"
            )
            if self.tries_left is not None:
                text += f"; {self.tries_left} tries left before it locks"
            return text
        if self.reason == "locked":
            return (
                f"too many wrong tries: the {what} is locked until an "
                "administrator unlocks it or the lock times out"
            )
        if self.reason == "not_enrolled":
            return (
                f"the signer has no {what} on record; enrol the device again "
                "with a new activation code"
            )
        if self.reason == "invalid_format":
            return "the PIN must be 4 to 12 digits"
        return "this signer's policy asks for no PIN at enrolment"


class SecondFactors:
    """Enrols and checks signers' PINs and TOTPs; see the module docstring."""

    def __init__(
        self,
        store: Store,
        *,
        max_pin_tries: int = 5,
        pin_lock: timedelta = timedelta(minutes=15),
        issuer: str = "Sigil",
        clock: Callable[[], datetime] = _utcnow,
        hasher: PasswordHasher | None = None,
    ) -> None:
        if max_pin_tries < 1:
            raise ValueError("max_pin_tries must be at least 1")
        if pin_lock <= timedelta(0):
            raise ValueError("pin_lock must be positive")
        self._store = store
        self.max_pin_tries = max_pin_tries
        self.pin_lock = pin_lock
        self.issuer = issuer
        self.clock = clock
        self._hasher = hasher or PasswordHasher()

    def __repr__(self) -> str:
        return (
            f"SecondFactors(max_pin_tries={self.max_pin_tries}, "
            f"pin_lock={self.pin_lock}, issuer={self.issuer!r})"
        )

    # -- enrolment ---------------------------------------------------------

    @staticmethod
    def check_enrolment(user: User, *, pin: str | None) -> None:
        """Refuse an enrolment whose PIN does not fit the policy; cheap, so
        that callers can run it before they create anything."""
        policy = _policy(user)
        if policy == "pin":
            if pin is None:
                raise FactorRefused("pin", "missing")
            if not is_valid_pin(pin):
                raise FactorRefused("pin", "invalid_format")
        elif pin is not None:
            raise FactorRefused("pin", "unexpected")

    async def enrol(self, user: User, *, pin: str | None, now: datetime) -> str | None:
        """Store the factor the user's policy asks for.

        ``"pin"``: the PIN's Argon2 hash; ``"totp"``: a new secret, returned
        as an ``otpauth://`` URI (give it to the device once; never log it).
        A new PIN or secret replaces the user's earlier one and clears its
        lock. Raises :class:`FactorRefused` for a missing or malformed PIN.
        """
        self.check_enrolment(user, pin=pin)
        policy = _policy(user)
        if policy == "pin":
            assert pin is not None  # checked above
            pin_hash = await asyncio.to_thread(self._hasher.hash, pin)
            await self._store.put_factors(
                UserFactors(user_id=user.user_id, pin_hash=pin_hash)
            )
            await self._store.clear_use_once(_pin_scope(user.user_id))
            return None
        if policy == "totp":
            secret = pyotp.random_base32()
            await self._store.put_factors(
                UserFactors(user_id=user.user_id, totp_secret=secret)
            )
            await self._store.clear_use_once(_otp_scope(user.user_id))
            await self._store.clear_use_once(f"totp:{user.user_id}")
            return pyotp.TOTP(secret).provisioning_uri(
                name=user.user_id, issuer_name=self.issuer
            )
        return None

    # -- checks -----------------------------------------------------------

    async def check(
        self, user: User, *, pin: str | None, otp: str | None, now: datetime
    ) -> None:
        """Check the factor the user's policy asks for; raise
        :class:`FactorRefused` unless it holds. Every check of a policy
        other than ``"none"`` leaves an audit record (AUD-1)."""
        policy = _policy(user)
        if policy == "none":
            return
        factor: Factor = "pin" if policy == "pin" else "otp"
        try:
            if factor == "pin":
                await self._check_pin(user.user_id, pin, now)
            else:
                await self._check_otp(user.user_id, otp, now)
        except FactorRefused as refused:
            await self._audit(user.user_id, factor, f"refused:{refused.reason}", now)
            raise
        await self._audit(user.user_id, factor, "success", now)

    async def _check_pin(self, user_id: str, pin: str | None, now: datetime) -> None:
        if pin is None:
            raise FactorRefused("pin", "missing")
        factors = await self._store.get_factors(user_id)
        if factors is None or factors.pin_hash is None:
            raise FactorRefused("pin", "not_enrolled")
        scope = _pin_scope(user_id)
        slot = await self._take_slot(scope, now)
        if slot is None:
            raise FactorRefused("pin", "locked")
        if not (is_valid_pin(pin) and await self._verify(factors.pin_hash, pin)):
            raise FactorRefused("pin", "invalid", tries_left=self.max_pin_tries - slot)
        await self._store.clear_use_once(scope)
        if self._hasher.check_needs_rehash(factors.pin_hash):
            fresh = await asyncio.to_thread(self._hasher.hash, pin)
            await self._store.put_factors(replace(factors, pin_hash=fresh))

    async def _check_otp(self, user_id: str, otp: str | None, now: datetime) -> None:
        if otp is None:
            raise FactorRefused("otp", "missing")
        factors = await self._store.get_factors(user_id)
        if factors is None or factors.totp_secret is None:
            raise FactorRefused("otp", "not_enrolled")
        scope = _otp_scope(user_id)
        slot = await self._take_slot(scope, now)
        if slot is None:
            raise FactorRefused("otp", "locked")
        totp = pyotp.TOTP(factors.totp_secret)
        current = totp.timecode(now)
        matched = []
        # Every step of the window is compared, in constant time each.
        for step in range(current - _TOTP_WINDOW, current + _TOTP_WINDOW + 1):
            expected = totp.generate_otp(step)
            same = _OTP.fullmatch(otp) is not None and hmac.compare_digest(
                expected.encode("ascii"), otp.encode("ascii")
            )
            if same:
                matched.append(step)
        for step in matched:
            if await self._store.accept_totp_step(user_id, step, now=now):
                await self._store.clear_use_once(scope)
                return
        raise FactorRefused("otp", "invalid", tries_left=self.max_pin_tries - slot)

    async def _take_slot(self, scope: str, now: datetime) -> int | None:
        """The first free attempt slot, taken atomically; None when locked."""
        expires_at = now + self.pin_lock
        for slot in range(1, self.max_pin_tries + 1):
            if await self._store.use_once(scope, str(slot), expires_at=expires_at):
                return slot
        return None

    async def _verify(self, pin_hash: str, pin: str) -> bool:
        def verify() -> bool:
            try:
                return self._hasher.verify(pin_hash, pin)
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(verify)

    # -- administration ----------------------------------------------------

    async def unlock(
        self, user_id: str, *, actor: str = "operator", now: datetime | None = None
    ) -> int:
        """Clear the user's attempt slots (an administrator's unlock) and
        audit it; return how many slots were taken."""
        cleared = await self._store.clear_use_once(_pin_scope(user_id))
        cleared += await self._store.clear_use_once(_otp_scope(user_id))
        await self._store.append_audit(
            time=now or self.clock(),
            event="factor.unlocked",
            actor=actor,
            subject=f"user:{user_id}",
            outcome="success",
            details={"slots": cleared},
        )
        return cleared

    async def _audit(
        self, user_id: str, factor: Factor, outcome: str, now: datetime
    ) -> None:
        await self._store.append_audit(
            time=now,
            event="factor.checked",
            actor=f"user:{user_id}",
            subject=f"user:{user_id}",
            outcome=outcome,
            details={"factor": factor},
        )


def _policy(user: User) -> str:
    if user.second_factor not in POLICIES:
        # Fail closed: an unknown policy is a bug, never "no factor".
        raise ValueError(f"unknown second-factor policy of user {user.user_id}")
    return user.second_factor


def _pin_scope(user_id: str) -> str:
    return f"pin:{user_id}"


def _otp_scope(user_id: str) -> str:
    return f"otp:{user_id}"
