"""What the server does, apart from how it is asked over HTTP.

The HTTP handlers and the operator command line both call this layer; it
owns request creation, enrolment and the expiry rule, and hands every
activation to the SAM.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from hsm import HashAlg, Hsm, HsmError, KeyType
from hsm.x509 import InvalidCsr, build_csr
from sam import (
    SignatureActivationModule,
    code_choices,
    signing_key_label,
    verification_code,
)
from sam.checkpoint import write_checkpoint
from sam.factors import FactorRefused, SecondFactors
from server.ca import DevelopmentCA
from server.config import Settings
from server.enrolment import (
    IssuedCode,
    activation_code_hash,
    add_user,
    issue_activation_code,
)
from server.errors import ApiError
from server.push import PushSender, check_push_endpoint, check_push_keys
from server.watch import RequestWatch
from store import (
    ActivationCode,
    Client,
    Credential,
    Device,
    DeviceStatus,
    DuplicateError,
    RequestState,
    SignatureRequest,
    Store,
    User,
)
from store.models import RP

__all__ = ["EnrolledDevice", "Service", "utcnow"]

log = logging.getLogger(__name__)

_FOREVER = datetime(9999, 1, 1, tzinfo=UTC)

# A request left in "approved" this long was cut off by a crash (STATE-3).
STALE_APPROVAL = timedelta(seconds=60)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class EnrolledDevice:
    """What an enrolment made; ``totp_uri`` is handed to the device once."""

    device: Device
    credential: Credential
    totp_uri: str | None = field(default=None, repr=False)


@dataclass(slots=True)
class Service:
    settings: Settings
    store: Store
    hsm: Hsm
    ca: DevelopmentCA
    sam: SignatureActivationModule
    pusher: PushSender | None
    watch: RequestWatch = field(default_factory=RequestWatch)
    vapid_public_key: str = ""
    audit_key_id: str | None = None
    code_secret: bytes = field(default=b"", repr=False)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _client_names: dict[str, str] = field(default_factory=dict)
    _user_creators: dict[str, str] = field(default_factory=dict)
    # Held only while in use: a weak mapping forgets idle users' locks.
    _user_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary
    )
    #: Signers' PINs and TOTPs (AUTH-3); the CSC API checks them too.
    factors: SecondFactors = field(init=False)

    def __post_init__(self) -> None:
        self.factors = SecondFactors(
            self.store,
            max_pin_tries=self.settings.pin_max_tries,
            pin_lock=timedelta(seconds=self.settings.pin_lock_seconds),
            clock=utcnow,
        )

    # -- users and enrolment ---------------------------------------------

    async def create_user(
        self,
        *,
        display_name: str,
        key_algorithm: str = "EC-P256",
        user_id: str | None,
        client: Client,
        second_factor: str = "none",
    ) -> User:
        return await add_user(
            self.store,
            display_name=display_name,
            key_algorithm=key_algorithm,
            user_id=user_id,
            created_by=f"client:{client.client_id}",
            second_factor=second_factor,
        )

    async def issue_activation_code(
        self, user_id: str, *, client: Client
    ) -> IssuedCode:
        return await issue_activation_code(
            self.store,
            user_id,
            ttl=self.settings.activation_code_ttl,
            client=client,
        )

    async def new_challenge(self) -> tuple[str, int]:
        challenge = secrets.token_urlsafe(32)
        lifetime = 300
        await self.store.put_challenge(
            challenge, expires_at=utcnow() + timedelta(seconds=lifetime)
        )
        return challenge, lifetime

    async def enrol(
        self,
        *,
        device_id: str,
        public_jwk: dict[str, Any],
        body: dict[str, Any],
    ) -> EnrolledDevice:
        """Register a device whose key signed the enrolment (proof of possession).

        Everything that can be checked is checked before the activation code
        is used; if a later step fails, the code is given back. The signer's
        second factor (AUTH-3) is set up last: a PIN from the body, or a new
        TOTP secret whose URI the answer carries.
        """
        subscription = body["push_subscription"]
        refusal = check_push_endpoint(
            subscription["endpoint"], allow_http=self.settings.allow_http_push
        ) or check_push_keys(subscription["keys"])
        if refusal is not None:
            raise ApiError(400, "invalid_push_subscription", refusal)
        now = utcnow()
        if not await self.store.take_challenge(body["challenge"], now=now):
            raise ApiError(
                400, "invalid_challenge", "the challenge is unknown or expired"
            )
        if await self.store.get_device(device_id) is not None:
            raise ApiError(409, "device_exists", "this device key is already enrolled")
        code = await self.store.consume_activation_code(
            activation_code_hash(body["activation_code"]), now=now
        )
        if code is None:
            await self._audit(
                "device.enrolled", f"device:{device_id}", "enrolment", "refused:code"
            )
            raise ApiError(
                403, "invalid_activation_code", "the activation code is unknown or used"
            )
        try:
            return await self._register(device_id, public_jwk, body, code, now)
        except BaseException as e:
            spent = isinstance(e, ApiError) and e.error == "user_already_enrolled"
            if not spent:
                # TODO(code-restore): a code issued for this user meanwhile is
                # replaced by the one given back; the store has no
                # insert-if-absent for codes yet.
                await self.store.add_activation_code(code)
            raise

    async def _register(
        self,
        device_id: str,
        public_jwk: dict[str, Any],
        body: dict[str, Any],
        code: ActivationCode,
        now: datetime,
    ) -> EnrolledDevice:
        user = await self.store.get_user(code.user_id)
        if user is None:
            raise ApiError(404, "unknown_user", "the user of this code is gone")
        pin = body.get("pin")
        try:
            # Before anything is made: a refused enrolment leaves nothing.
            SecondFactors.check_enrolment(user, pin=pin)
        except FactorRefused as e:
            await self._audit(
                "device.enrolled",
                f"device:{device_id}",
                f"user:{user.user_id}",
                f"refused:pin_{e.reason}",
            )
            raise ApiError(400, "invalid_request", _enrolment_refusal(e)) from None
        credential = await self._credential_for(user)
        device = Device(
            device_id=device_id,
            user_id=user.user_id,
            public_key_jwk={k: public_jwk[k] for k in ("kty", "crv", "x", "y")},
            push_subscription=body["push_subscription"],
            status=DeviceStatus.ACTIVE,
            name=body.get("name") or "device",
            created_at=now,
        )
        try:
            await self.store.add_device(device)
        except DuplicateError as e:
            raise ApiError(
                409, "device_exists", "this device key is already enrolled"
            ) from e
        if code.issued_by != "operator" and not await self.store.use_once(
            "first-device", user.user_id, expires_at=_FOREVER
        ):
            # A relying app's code enrols the first device only. Of devices
            # that raced in on codes issued before any finished, the first to
            # take this atomic mark stays; the others are revoked at once.
            await self.store.set_device_status(device_id, DeviceStatus.REVOKED)
            await self._audit(
                "device.revoked", "server", f"device:{device_id}", "enrolment_race"
            )
            raise ApiError(
                409,
                "user_already_enrolled",
                "the user has a device; another device needs the operator",
            )
        totp_uri = await self.factors.enrol(user, pin=pin, now=now)
        await self._audit(
            "device.enrolled",
            f"device:{device_id}",
            f"user:{user.user_id}",
            "success",
            {"second_factor": user.second_factor},
        )
        return EnrolledDevice(device, credential, totp_uri)

    async def _credential_for(self, user: User) -> Credential:
        """The user's signing credential, made in the HSM on first enrolment."""
        for credential in await self.store.list_credentials(user_id=user.user_id):
            if credential.status == "active":
                return credential
        key_type = KeyType(user.key_algorithm)
        key = await self.hsm.generate_key(
            key_type, label=signing_key_label(user.user_id)
        )
        try:
            subject = x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, user.display_name),
                    x509.NameAttribute(NameOID.SERIAL_NUMBER, user.user_id),
                ]
            )
            csr = await build_csr(self.hsm, key, subject=subject)
            certificate = await self.ca.issue(csr)
        except (HsmError, InvalidCsr, ValueError) as e:
            await self.hsm.destroy_key(key.key_id)
            log.warning("credential for user %s not made: %s", user.user_id, e)
            raise ApiError(
                500, "server_error", "the signing key could not be made"
            ) from e
        credential = Credential(
            credential_id=str(uuid.uuid4()),
            user_id=user.user_id,
            key_id=key.key_id,
            key_algorithm=str(key_type),
            certificate_der=certificate,
            chain_der=(certificate, self.ca.certificate_der),
            status="active",
            created_at=utcnow(),
        )
        await self.store.add_credential(credential)
        await self._audit(
            "key.generated",
            "server",
            f"credential:{credential.credential_id}",
            "success",
            {"user": user.user_id, "key_type": str(key_type)},
        )
        return credential

    # -- signature requests ----------------------------------------------

    async def create_request(
        self, client: Client, body: dict[str, Any]
    ) -> tuple[SignatureRequest, bool]:
        """Create a request (or find the idempotent twin); push if new."""
        if not body["display_text"].strip():
            raise ApiError(400, "invalid_request", "display_text is blank")
        hash_alg = _hash_algorithm(body["hash_algorithm"])
        hashes = body["hashes"]
        if len(hashes) > self.settings.max_hashes:
            raise ApiError(
                400,
                "invalid_request",
                f"at most {self.settings.max_hashes} hashes per request",
            )
        normalized = tuple(_check_hash(i, h, hash_alg) for i, h in enumerate(hashes))
        ttl = body.get("ttl_seconds", self.settings.default_ttl)
        low, high = self.settings.min_ttl, self.settings.max_ttl
        if not low <= ttl <= high:
            raise ApiError(
                400,
                "invalid_request",
                f"ttl_seconds must be between {low} and {high}",
            )

        credential = await self._resolve_credential(body)
        return await self.open_request(
            client,
            credential,
            hash_alg=hash_alg,
            hashes=normalized,
            display_text=body["display_text"],
            ttl=ttl,
            idempotency_key=body.get("idempotency_key"),
        )

    async def open_request(
        self,
        client: Client,
        credential: Credential,
        *,
        hash_alg: HashAlg,
        hashes: tuple[str, ...],
        display_text: str,
        ttl: int,
        idempotency_key: str | None = None,
        kind: str = RP,
    ) -> tuple[SignatureRequest, bool]:
        """Store a pending request for checked input and push it to the
        signer's phones; a relying-party request (``kind`` RP) or a CSC
        authorisation of one signature per hash (``kind`` CSC)."""
        normalized = hashes
        # One user's requests are counted and inserted one at a time, so the
        # cap holds under concurrent calls (within this process; several
        # processes may overshoot it by one each).
        async with self._user_lock(credential.user_id):
            pending, devices = await asyncio.gather(
                self.store.list_requests(
                    user_id=credential.user_id,
                    states=(RequestState.PENDING,),
                    limit=self.settings.max_pending_per_user,
                ),
                self.store.list_devices(user_id=credential.user_id),
            )
            if len(pending) >= self.settings.max_pending_per_user:
                raise ApiError(
                    429,
                    "too_many_pending_requests",
                    "the user has too many requests waiting for a decision",
                    headers={"Retry-After": "10"},
                )
            active = [d for d in devices if d.status is DeviceStatus.ACTIVE]
            if not active:
                raise ApiError(
                    400, "user_not_enrolled", "the user has no active device"
                )

            now = utcnow()
            request_id = secrets.token_urlsafe(16)
            nonce = secrets.token_urlsafe(24)
            new = SignatureRequest(
                request_id=request_id,
                client_id=client.client_id,
                user_id=credential.user_id,
                credential_id=credential.credential_id,
                hash_algorithm=hash_alg.oid,
                hashes=normalized,
                display_text=display_text,
                nonce=nonce,
                verification_code=verification_code(
                    secret=self.code_secret,
                    request_id=request_id,
                    nonce=nonce,
                    hashes=normalized,
                ),
                state=RequestState.PENDING,
                created_at=now,
                updated_at=now,
                expires_at=now + timedelta(seconds=ttl),
                idempotency_key=idempotency_key,
                kind=kind,
                num_signatures=len(normalized),
            )
            stored = await self.store.create_request(new)
        if stored.request_id != request_id:
            same = (
                stored.credential_id == new.credential_id
                and stored.hashes == new.hashes
                and stored.hash_algorithm == new.hash_algorithm
                and stored.display_text == new.display_text
            )
            if not same:
                raise ApiError(
                    409,
                    "idempotency_key_reused",
                    "the idempotency key was used for a different request",
                )
            return await self.current(stored), False
        await self._audit(
            "request.created",
            f"client:{client.client_id}",
            f"request:{request_id}",
            "success",
            {
                "hashes": len(normalized),
                "credential": credential.credential_id,
                "kind": kind,
            },
        )
        self.push_later(stored, active)
        return stored, True

    async def _resolve_credential(self, body: dict[str, Any]) -> Credential:
        if "credential_id" in body:
            credential = await self.store.get_credential(body["credential_id"])
            if credential is None or credential.status != "active":
                raise ApiError(400, "unknown_credential", "no such credential")
            return credential
        user = await self.store.get_user(body["user_id"])
        if user is None:
            raise ApiError(400, "unknown_user", "no such user")
        for credential in await self.store.list_credentials(user_id=user.user_id):
            if credential.status == "active":
                return credential
        raise ApiError(400, "user_not_enrolled", "the user has no signing credential")

    def _user_lock(self, user_id: str) -> asyncio.Lock:
        lock = self._user_locks.get(user_id)
        if lock is None:
            lock = self._user_locks[user_id] = asyncio.Lock()
        return lock

    def push_later(self, request: SignatureRequest, devices: list[Device]) -> None:
        if self.pusher is None:
            return
        task = asyncio.create_task(self.pusher.notify(request, devices))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def current(self, request: SignatureRequest) -> SignatureRequest:
        """Apply the expiry rule on read: a pending request past its time is
        expired, whether or not the sweeper has run."""
        if request.state is RequestState.PENDING and request.expires_at <= utcnow():
            moved = await self.store.transition(
                request.request_id,
                from_states=(RequestState.PENDING,),
                to_state=RequestState.EXPIRED,
                now=utcnow(),
            )
            if moved is not None:
                self.watch.changed(request.request_id)
                await self._audit(
                    "request.expired",
                    "server",
                    f"request:{request.request_id}",
                    "success",
                )
                return moved
            fresh = await self.store.get_request(request.request_id)
            return fresh or request
        return request

    async def visible_request(
        self,
        request_id: str,
        *,
        client_id: str | None = None,
        user_id: str | None = None,
    ) -> SignatureRequest:
        request = await self.store.get_request(request_id)
        if (
            request is None
            or (client_id is not None and request.client_id != client_id)
            or (user_id is not None and request.user_id != user_id)
        ):
            raise ApiError(404, "not_found", "no such signature request")
        request = await self.current(request)
        retention = timedelta(seconds=self.settings.finished_retention)
        if (
            request.finished_at is not None
            and request.finished_at + retention <= utcnow()
        ):
            raise ApiError(404, "not_found", "no such signature request")
        return request

    async def wait_for_change(
        self, request_id: str, client_id: str, wait: float
    ) -> SignatureRequest:
        """Long poll: answer when the request is final or ``wait`` runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        request = await self.visible_request(request_id, client_id=client_id)
        while not request.state.is_final and not self.watch.closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            # Re-read at least every second: another process may change it.
            await self.watch.wait(
                request_id, min(remaining, 1.0, _until(request.expires_at) + 0.05)
            )
            request = await self.visible_request(request_id, client_id=client_id)
        return request

    async def cancel(self, request_id: str, client: Client) -> SignatureRequest:
        request = await self.visible_request(request_id, client_id=client.client_id)
        moved = await self.store.transition(
            request.request_id,
            from_states=(RequestState.PENDING,),
            to_state=RequestState.CANCELLED,
            now=utcnow(),
            updates={"error": "cancelled_by_relying_party"},
        )
        if moved is None:
            current = await self.visible_request(request_id, client_id=client.client_id)
            raise ApiError(
                409, "request_not_pending", f"the request is already {current.state}"
            )
        self.watch.changed(request_id)
        await self._audit(
            "request.cancelled",
            f"client:{client.client_id}",
            f"request:{request_id}",
            "success",
        )
        return moved

    async def approve(
        self,
        request_id: str,
        sad: str,
        device: Device,
        *,
        pin: str | None = None,
        otp: str | None = None,
    ) -> SignatureRequest:
        request = await self.visible_request(request_id, user_id=device.user_id)
        await self._check_second_factor(request, pin=pin, otp=otp)
        try:
            return await self.sam.verify_and_sign(request_id=request_id, sad=sad)
        finally:
            self.watch.changed(request_id)

    async def second_factor_for(self, request: SignatureRequest) -> str:
        """What the phone must send with its approval of ``request``:
        ``"none"``, ``"pin"`` or ``"totp"``. CSC authorisations check the
        signer's factor at ``credentials/authorize`` instead."""
        user = await self._policy_user(request)
        return "none" if user is None else user.second_factor

    async def _policy_user(self, request: SignatureRequest) -> User | None:
        if request.kind != RP:
            return None
        user = await self.store.get_user(request.user_id)
        if user is None or user.second_factor == "none":
            return None
        return user

    async def _check_second_factor(
        self, request: SignatureRequest, *, pin: str | None, otp: str | None
    ) -> None:
        """Check the PIN or one-time code a relying-party approval carries
        (AUTH-3) before the SAM sees the SAD; a refusal leaves the request
        pending, so that the signer can try again until locked or expired."""
        user = await self._policy_user(request)
        needed = "none" if user is None else user.second_factor
        unexpected = (pin is not None and needed != "pin") or (
            otp is not None and needed != "totp"
        )
        if unexpected:
            raise ApiError(400, "invalid_request", _UNEXPECTED_FACTOR[needed])
        if user is None or request.state is not RequestState.PENDING:
            return  # the SAM refuses what is not pending, with its own answer
        try:
            await self.factors.check(user, pin=pin, otp=otp, now=self.factors.clock())
        except FactorRefused as e:
            raise ApiError(403, e.error, e.description) from None

    async def reject(
        self, request_id: str, sad: str, device: Device
    ) -> SignatureRequest:
        await self.visible_request(request_id, user_id=device.user_id)
        try:
            return await self.sam.verify_and_reject(request_id=request_id, sad=sad)
        finally:
            self.watch.changed(request_id)

    async def client_name(self, client_id: str) -> str:
        name = self._client_names.get(client_id)
        if name is None:
            self._client_names = {
                c.client_id: c.name for c in await self.store.list_clients()
            }
            name = self._client_names.get(client_id, client_id)
        return name

    async def user_creator(self, user_id: str) -> str | None:
        """Who created the user ("operator" or "client:<id>"), from memory
        after the first read: it never changes, and users are not deleted."""
        creator = self._user_creators.get(user_id)
        if creator is None:
            user = await self.store.get_user(user_id)
            if user is None:
                return None
            if len(self._user_creators) > 100_000:
                self._user_creators.clear()
            creator = self._user_creators[user_id] = user.created_by
        return creator

    def choices(self, request: SignatureRequest) -> tuple[str, ...]:
        return code_choices(
            secret=self.code_secret,
            right=request.verification_code,
            nonce=request.nonce,
        )

    # -- housekeeping --------------------------------------------------------

    async def sweep(self) -> None:
        now = utcnow()
        await self.recover()
        for request_id in await self.store.expire_due(now=now):
            self.watch.changed(request_id)
            await self._audit(
                "request.expired", "server", f"request:{request_id}", "success"
            )
        retention = timedelta(seconds=self.settings.finished_retention)
        await self.store.purge_finished(before=now - retention)

    async def checkpoint(self) -> None:
        """Seal the audit trail so far with a signed checkpoint (AUD-3)."""
        if self.audit_key_id is None:
            return
        await write_checkpoint(self.store, self.hsm, self.audit_key_id, now=utcnow())

    async def recover(self) -> None:
        """Fail requests a crash left half-way through signing (STATE-3), and
        append audit records an outage kept from being appended."""
        now = utcnow()
        await self.store.flush_audit(now=now)
        for request_id in await self.store.fail_stale_approved(
            before=now - STALE_APPROVAL, now=now
        ):
            log.warning(
                "request %s was cut off while signing; marked failed", request_id
            )
            self.watch.changed(request_id)
            await self._audit(
                "request.failed", "server", f"request:{request_id}", "crash"
            )

    async def _audit(
        self,
        event: str,
        actor: str,
        subject: str,
        outcome: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        await self.store.append_audit(
            time=utcnow(),
            event=event,
            actor=actor,
            subject=subject,
            outcome=outcome,
            details=details,
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


_UNEXPECTED_FACTOR = {
    "none": "this approval takes no PIN or one-time code",
    "pin": "this signer's policy asks for a PIN, not a one-time code",
    "totp": "this signer's policy asks for a one-time code, not a PIN",
}


def _enrolment_refusal(refused: FactorRefused) -> str:
    if refused.reason == "missing":
        return "this signer's policy asks for a PIN at enrolment"
    if refused.reason == "unexpected":
        return "this signer's policy asks for no PIN at enrolment"
    return "the PIN must be 4 to 12 digits"


def _until(when: datetime) -> float:
    return max(0.0, (when - utcnow()).total_seconds())


def _hash_algorithm(name: str) -> HashAlg:
    try:
        return HashAlg.from_name(name)
    except ValueError as e:
        raise ApiError(
            400,
            "invalid_hash_algorithm",
            "hash_algorithm must be SHA-256, SHA-384 or SHA-512 (by name or OID)",
        ) from e


def _check_hash(index: int, value: str, hash_alg: HashAlg) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(
            400, "invalid_request", f"hashes[{index}] is not valid base64"
        ) from e
    if len(raw) != hash_alg.digest_size:
        raise ApiError(
            400,
            "invalid_request",
            f"hashes[{index}] has {len(raw)} bytes; {hash_alg.name} needs "
            f"{hash_alg.digest_size}",
        )
    return base64.b64encode(raw).decode("ascii")
