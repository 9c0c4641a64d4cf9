"""The Signature Activation Module: verify the SAD, then sign (SAD-3 to SAD-5).

Narrow entry points keep the SAM separable from the web front end, and only
two of them reach a signer's key in the HSM (EN 419241-2, SAM protection of
the signing key): :meth:`SignatureActivationModule.verify_and_sign` signs a
relying-party request's hashes once its SAD verifies, and
:meth:`SignatureActivationModule.spend_authorisation` signs hashes of a CSC
authorisation, which the same SAD check approved earlier. Either signs only
hashes that a verified SAD covers, each once, and never more signatures than
the SAD allows.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from hsm import HashAlg as HsmHashAlg
from hsm import Hsm, HsmError, KeyType, SignMechanism
from sam.authorisation import mint_token, token_matches, token_request_id
from sam.errors import (
    ActivationError,
    AudienceMismatch,
    AuthorisationExpired,
    AuthorisationSpent,
    CredentialMismatch,
    CredentialUnusable,
    DecisionMismatch,
    DeviceRevoked,
    DisplayTextMismatch,
    ExtensionRefused,
    ForeignDevice,
    HashAlreadySigned,
    HashMismatch,
    HashNotAuthorised,
    InvalidAuthorisation,
    IssuerMismatch,
    MalformedSad,
    NonceMismatch,
    RequestExpired,
    RequestMismatch,
    RequestNotFound,
    RequestNotPending,
    SadExpired,
    SadNotYetValid,
    SadReplayed,
    SignAlgorithmMismatch,
    SignatureCountMismatch,
    SigningFailed,
    TooManySignatures,
    UnknownDevice,
    WrongVerificationCode,
)
from sam.sad import SadClaims, read_header, verify_sad
from store import (
    CSC,
    AuditEvent,
    Credential,
    Device,
    DeviceStatus,
    RequestState,
    SignatureRequest,
    Store,
)

__all__ = [
    "SignatureActivationModule",
    "display_text_hash",
    "mechanism_for",
    "signing_key_label",
]

log = logging.getLogger(__name__)

APPROVE = "approve"
REJECT = "reject"

# An RFC 7638 SHA-256 thumbprint, base64url without padding.
_THUMBPRINT = re.compile(r"[A-Za-z0-9_-]{43}")

# A SAD is short lived: it is made seconds before it is sent.
MAX_CLOCK_SKEW = timedelta(seconds=60)
MAX_SAD_LIFETIME = 300

# How long an approved CSC authorisation may be spent by default, and how
# long after it was asked for extensions may keep it alive at most.
AUTHORISATION_LIFETIME = timedelta(minutes=5)
AUTHORISATION_MAX_SPAN = timedelta(hours=1)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def signing_key_label(user_id: str) -> str:
    """The CKA_LABEL of a user's signing key: its purpose, kept by the token."""
    return f"user:{user_id}"


def display_text_hash(text: str) -> str:
    """base64url SHA-256 of the UTF-8 display text, as the ``dth`` claim."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def mechanism_for(key_algorithm: str) -> SignMechanism:
    key_type = KeyType(key_algorithm)
    if key_type in (KeyType.EC_P256, KeyType.EC_P384):
        return SignMechanism.ECDSA
    return SignMechanism.RSA_PKCS1V15


def _sad_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class SignatureActivationModule:
    """Checks Signature Activation Data and drives the HSM for one request."""

    def __init__(
        self,
        *,
        store: Store,
        hsm: Hsm,
        audience: str,
        authorisation_secret: bytes | None = None,
        authorisation_lifetime: timedelta = AUTHORISATION_LIFETIME,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._store = store
        self._hsm = hsm
        self._audience = audience
        # Processes sharing a store must share the secret (server.app).
        self._token_secret = authorisation_secret or secrets.token_bytes(32)
        self._authorisation_lifetime = authorisation_lifetime
        self._clock = clock
        self._keys: dict[str, ECKey] = {}
        self._credentials: dict[str, Credential] = {}

    @property
    def audience(self) -> str:
        return self._audience

    async def verify_and_sign(self, *, request_id: str, sad: str) -> SignatureRequest:
        """Verify an approving SAD for ``request_id`` and sign its hashes.

        Returns the request in state ``signed``. Raises an
        :class:`ActivationError` subclass naming the rule that failed; every
        acceptance and refusal leaves an audit record (AUD-1).
        """
        digest = _sad_digest(sad)
        try:
            device, claims, request = await self._verify(
                request_id=request_id, sad=sad, decision=APPROVE
            )
            # The user must have picked the code the relying app showed.
            vc = claims.verification_code or ""
            if not hmac.compare_digest(vc, request.verification_code):
                await self._store.transition(
                    request.request_id,
                    from_states=(RequestState.PENDING,),
                    to_state=RequestState.FAILED,
                    now=self._clock(),
                    updates={"error": WrongVerificationCode.code},
                )
                raise WrongVerificationCode("the verification code picked is wrong")
            approved = await self._consume(request, device, digest)
        except ActivationError as e:
            await self._refused(request_id=request_id, sad=sad, error=e)
            raise
        if approved.kind == CSC:
            # A CSC authorisation is approved, not signed: the CSC client
            # spends it with signHash (spend_authorisation).
            return approved
        return await self._sign(approved, claims)

    async def verify_and_reject(self, *, request_id: str, sad: str) -> SignatureRequest:
        """Verify a rejecting SAD and move the request to ``rejected``."""
        digest = _sad_digest(sad)
        try:
            device, _claims, request = await self._verify(
                request_id=request_id, sad=sad, decision=REJECT
            )
            rejected = await self._store.transition(
                request.request_id,
                from_states=(RequestState.PENDING,),
                to_state=RequestState.REJECTED,
                now=self._clock(),
                not_expired=True,
                updates={"sad_digest": digest, "error": "rejected_by_user"},
            )
            if rejected is None:
                raise await self._lost_race(request_id)
        except ActivationError as e:
            await self._refused(request_id=request_id, sad=sad, error=e)
            raise
        await self._audit(
            "request.rejected",
            actor=f"device:{device.device_id}",
            subject=f"request:{request_id}",
            outcome="success",
            details={"sad_sha256": digest, "user": device.user_id},
        )
        return rejected

    # -- verification ----------------------------------------------------

    async def _verify(
        self, *, request_id: str, sad: str, decision: str
    ) -> tuple[Device, SadClaims, SignatureRequest]:
        header = read_header(sad)

        # Both reads in one go: the checks below still run in their order.
        device, request = await asyncio.gather(
            self._store.get_device(header.device_id),
            self._store.get_request(request_id),
        )
        if device is None:
            raise UnknownDevice("the SAD was made by an unknown device")
        if device.status is not DeviceStatus.ACTIVE:
            raise DeviceRevoked("the SAD was made by a revoked device")

        claims = verify_sad(sad, self._device_key(device))

        if request is None:
            raise RequestNotFound("no such signature request")

        # The approving device must belong to the signer (SAD-3).
        if device.user_id != request.user_id:
            raise ForeignDevice("the device does not belong to the signer")

        if claims.issuer != device.device_id:
            raise IssuerMismatch("iss does not name the signing device")

        if claims.decision != decision:
            raise DecisionMismatch(f"the SAD does not {decision} the request")

        if claims.audience != self._audience:
            raise AudienceMismatch("the SAD was made for another server")

        if claims.request_id != request.request_id:
            raise RequestMismatch("the SAD was made for another request")

        if claims.credential_id != request.credential_id:
            raise CredentialMismatch("the SAD was made for another credential")

        if not hmac.compare_digest(claims.nonce, request.nonce):
            raise NonceMismatch("the SAD carries another request's nonce")

        # Every hash, exactly, in order (SAD-2): none missing, added or changed.
        if claims.hash_algorithm != request.hash_algorithm:
            raise HashMismatch("the SAD names another hash algorithm")
        if claims.hashes != request.hashes:
            raise HashMismatch("the SAD does not cover exactly the request's hashes")
        if claims.num_signatures != len(request.hashes):
            raise SignatureCountMismatch(
                "numSignatures differs from the number of hashes"
            )

        if claims.display_text_hash != display_text_hash(request.display_text):
            raise DisplayTextMismatch("the SAD was made for another display text")

        self._check_times(claims)

        if request.state is not RequestState.PENDING:
            raise self._not_pending(request)
        if request.expires_at <= self._clock():
            await self._store.transition(
                request.request_id,
                from_states=(RequestState.PENDING,),
                to_state=RequestState.EXPIRED,
                now=self._clock(),
            )
            raise RequestExpired("the signature request has expired")
        return device, claims, request

    def _check_times(self, claims: SadClaims) -> None:
        now = int(self._clock().timestamp())
        skew = int(MAX_CLOCK_SKEW.total_seconds())
        if claims.issued_at > now + skew:
            raise SadNotYetValid("the SAD was issued in the future")
        if claims.issued_at < now - MAX_SAD_LIFETIME - skew:
            raise SadNotYetValid("the SAD was issued too long ago")
        if claims.expires_at <= claims.issued_at:
            raise MalformedSad("the SAD expires before it was issued")
        if claims.expires_at - claims.issued_at > MAX_SAD_LIFETIME:
            raise MalformedSad("the SAD lives longer than the server allows")
        if claims.expires_at <= now - skew:
            raise SadExpired("the SAD has expired")

    def _device_key(self, device: Device) -> ECKey:
        key = self._keys.get(device.device_id)
        if key is None:
            try:
                key = ECKey.import_key(device.public_key_jwk)
            except (JoseError, ValueError) as e:
                raise UnknownDevice("the device key cannot be read") from e
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[device.device_id] = key
        return key

    async def credential(self, credential_id: str) -> Credential | None:
        """The credential, from memory after its first read."""
        # A credential's key and certificate never change once issued.
        # TODO(credential-revocation): nothing revokes a credential yet; once
        # something does, this cache must see the change (or go).
        credential = self._credentials.get(credential_id)
        if credential is None:
            credential = await self._store.get_credential(credential_id)
            if credential is not None:
                if len(self._credentials) > 10_000:
                    self._credentials.clear()
                self._credentials[credential_id] = credential
        return credential

    @staticmethod
    def _not_pending(request: SignatureRequest) -> ActivationError:
        if request.state in (RequestState.APPROVED, RequestState.SIGNED):
            return SadReplayed("the request was already approved")
        if request.state is RequestState.EXPIRED:
            return RequestExpired("the signature request has expired")
        return RequestNotPending(f"the request is already {request.state}")

    async def _lost_race(self, request_id: str) -> ActivationError:
        current = await self._store.get_request(request_id)
        if current is None:
            return RequestNotFound("no such signature request")
        if current.state is RequestState.PENDING:
            return RequestExpired("the signature request has expired")
        return self._not_pending(current)

    # -- activation --------------------------------------------------------

    async def _consume(
        self, request: SignatureRequest, device: Device, digest: str
    ) -> SignatureRequest:
        """Consume the SAD: one atomic pending -> approved move (SAD-4),
        recorded together with its acceptance."""
        now = self._clock()
        updates: dict[str, Any] = {"sad_digest": digest}
        if request.kind == CSC:
            updates["authorized_until"] = min(
                now + self._authorisation_lifetime,
                request.created_at + AUTHORISATION_MAX_SPAN,
            )
        approved = await self._store.transition(
            request.request_id,
            from_states=(RequestState.PENDING,),
            to_state=RequestState.APPROVED,
            now=now,
            not_expired=True,
            updates=updates,
            audit=AuditEvent(
                "sad.accepted",
                actor=f"device:{device.device_id}",
                subject=f"request:{request.request_id}",
                outcome="success",
                details={"sad_sha256": digest, "user": device.user_id},
            ),
        )
        if approved is None:
            raise await self._lost_race(request.request_id)
        return approved

    async def _sign(
        self, request: SignatureRequest, claims: SadClaims
    ) -> SignatureRequest:
        """Sign exactly the hashes the verified SAD covers (SAD-5)."""
        try:
            credential = await self.credential(request.credential_id)
            if (
                credential is None
                or credential.user_id != request.user_id
                or credential.status != "active"
            ):
                raise CredentialUnusable("the credential cannot be used")
            hash_alg = HsmHashAlg.from_name(claims.hash_algorithm)
            mechanism = mechanism_for(credential.key_algorithm)
            signatures = await self._hsm_sign(
                credential,
                claims.hashes[: claims.num_signatures],
                hash_alg=hash_alg,
                mechanism=mechanism,
            )
        except (HsmError, ValueError, CredentialUnusable) as e:
            await self._store.transition(
                request.request_id,
                from_states=(RequestState.APPROVED,),
                to_state=RequestState.FAILED,
                now=self._clock(),
                updates={"error": SigningFailed.code},
            )
            await self._signing_failed(request, e)
            raise SigningFailed("the HSM could not sign") from e

        signed = await self._store.transition(
            request.request_id,
            from_states=(RequestState.APPROVED,),
            to_state=RequestState.SIGNED,
            now=self._clock(),
            updates={"signatures": tuple(signatures)},
            audit=AuditEvent(
                "key.use",
                actor="sam",
                subject=f"credential:{request.credential_id}",
                outcome="success",
                details={"request": request.request_id, "signatures": len(signatures)},
            ),
        )
        if signed is None:
            # Only recovery moves a request out of "approved" meanwhile: it
            # judged this signing lost. The signatures are dropped unused.
            raise SigningFailed("the request left the approved state while signing")
        log.debug("request %s signed", request.request_id)
        return signed

    # -- CSC authorisations ------------------------------------------------

    def authorisation_token(self, request: SignatureRequest) -> str:
        """The SAD a CSC client spends, for an approved authorisation."""
        return mint_token(self._token_secret, request)

    async def authorised_request(
        self, token: str, *, credential_id: str, client_id: str
    ) -> SignatureRequest:
        """The live authorisation ``token`` names, for ``credential_id`` and
        the relying app ``client_id`` that asked for it."""
        request_id = token_request_id(token)
        request = (
            None if request_id is None else await self._store.get_request(request_id)
        )
        if (
            request is None
            or request.kind != CSC
            or request.credential_id != credential_id
            or request.client_id != client_id
            or request.sad_digest is None
        ):
            raise InvalidAuthorisation("the SAD is not valid for this credential")
        if request.state is RequestState.SIGNED:
            raise AuthorisationSpent("every signature of this SAD has been made")
        if request.state is RequestState.CANCELLED:
            # e.g. the approving phone was revoked (server.enrolment).
            raise InvalidAuthorisation("the authorisation was cancelled")
        if not token_matches(self._token_secret, token, request):
            # An older token of an extended authorisation lands here too.
            raise InvalidAuthorisation("the SAD is not valid for this credential")
        until = request.authorized_until
        if (
            request.state is not RequestState.APPROVED
            or until is None
            or until <= self._clock()
        ):
            raise AuthorisationExpired("the SAD has expired")
        return request

    async def extend_authorisation(
        self, token: str, *, credential_id: str, client_id: str
    ) -> SignatureRequest:
        """Give a live authorisation a fresh lifetime; its old SAD stops
        working and :meth:`authorisation_token` gives the new one."""
        request = await self.authorised_request(
            token, credential_id=credential_id, client_id=client_id
        )
        now = self._clock()
        until = min(
            now + self._authorisation_lifetime,
            request.created_at + AUTHORISATION_MAX_SPAN,
        )
        if request.authorized_until is not None and until <= request.authorized_until:
            raise ExtensionRefused("the SAD cannot be extended any further")
        extended = await self._store.extend_authorization(
            request.request_id,
            until=until,
            now=now,
            audit=AuditEvent(
                "sad.extended",
                actor=f"client:{client_id}",
                subject=f"request:{request.request_id}",
                outcome="success",
                details={"until": until.isoformat()},
            ),
        )
        if extended is None:
            raise AuthorisationExpired("the SAD has expired")
        return extended

    async def spend_authorisation(
        self,
        token: str,
        *,
        credential_id: str,
        client_id: str,
        hashes: Sequence[str],
        hash_alg: HsmHashAlg,
        mechanism: SignMechanism,
        pss_salt_length: int | None = None,
    ) -> list[str]:
        """Sign ``hashes`` (base64 digests) under a CSC authorisation.

        Each hash must be one the phone approved, not signed before, and the
        total never passes the number approved (SAD-5); the hashes are spent
        in one atomic step before the HSM signs, so a crash can lose a
        signature but never make one twice. Returns base64 signatures in
        the order of ``hashes``.
        """
        request = await self.authorised_request(
            token, credential_id=credential_id, client_id=client_id
        )
        if hash_alg.oid != request.hash_algorithm:
            raise HashNotAuthorised("the SAD was approved for another hash algorithm")
        wanted = list(hashes)
        for value in wanted:
            if value not in request.hashes:
                raise HashNotAuthorised("a hash is not covered by the SAD")
            if value in request.used_hashes:
                raise HashAlreadySigned("a hash was already signed with this SAD")
        if len(set(wanted)) != len(wanted):
            raise HashAlreadySigned("a hash appears twice")
        if len(request.used_hashes) + len(wanted) > request.num_signatures:
            raise TooManySignatures("more signatures than the SAD authorises")

        credential = await self.credential(request.credential_id)
        if (
            credential is None
            or credential.user_id != request.user_id
            or credential.status != "active"
        ):
            raise CredentialUnusable("the credential cannot be used")
        if not mechanism.fits(KeyType(credential.key_algorithm)):
            raise SignAlgorithmMismatch("the signature algorithm does not fit the key")

        reserved = await self._store.reserve_hashes(
            request.request_id, hashes=wanted, now=self._clock()
        )
        if reserved is None:
            # Another call spent some of them, or time ran out, meanwhile.
            raise HashAlreadySigned("the hashes were spent by another call")

        try:
            signatures = await self._hsm_sign(
                credential,
                wanted,
                hash_alg=hash_alg,
                mechanism=mechanism,
                pss_salt_length=pss_salt_length,
            )
        except (HsmError, ValueError) as e:
            await self._signing_failed(request, e)
            raise SigningFailed("the HSM could not sign") from e

        stored = await self._store.add_signatures(
            request.request_id,
            hashes=wanted,
            signatures=signatures,
            now=self._clock(),
            audit=AuditEvent(
                "key.use",
                actor="sam",
                subject=f"credential:{request.credential_id}",
                outcome="success",
                details={
                    "request": request.request_id,
                    "signatures": len(signatures),
                    "mechanism": str(mechanism),
                },
            ),
        )
        if stored is None:
            # The authorisation expired while the HSM signed: the signatures
            # are dropped, as the store no longer takes them.
            raise AuthorisationExpired("the SAD expired while signing")
        return signatures

    async def _hsm_sign(
        self,
        credential: Credential,
        hashes: Sequence[str],
        *,
        hash_alg: HsmHashAlg,
        mechanism: SignMechanism,
        pss_salt_length: int | None = None,
    ) -> list[str]:
        """Sign base64 digests with the credential's key; base64 results."""
        signatures: list[str] = []
        for value in hashes:
            signature = await self._hsm.sign_digest(
                credential.key_id,
                base64.b64decode(value, validate=True),
                mechanism=mechanism,
                hash_alg=hash_alg,
                pss_salt_length=pss_salt_length,
                # The token must agree that this is the signer's key: a
                # credential record pointing at another key signs nothing.
                label=signing_key_label(credential.user_id),
            )
            signatures.append(base64.b64encode(signature).decode("ascii"))
        return signatures

    async def _signing_failed(
        self, request: SignatureRequest, error: BaseException
    ) -> None:
        log.warning(
            "signing failed for request %s: %s",
            request.request_id,
            type(error).__name__,
        )
        await self._audit(
            "key.use",
            actor="sam",
            subject=f"credential:{request.credential_id}",
            outcome=f"failure:{type(error).__name__}",
            details={"request": request.request_id},
        )

    # -- audit ---------------------------------------------------------------

    async def _refused(
        self, *, request_id: str, sad: str, error: ActivationError
    ) -> None:
        sad_digest = _sad_digest(sad)
        log.info("SAD refused for request %s: %s", request_id, error.code)
        try:
            # The kid is only claimed: the signature may not have held. Only a
            # well-formed thumbprint is recorded, never arbitrary text.
            kid = read_header(sad).device_id
        except MalformedSad:
            kid = ""
        actor = f"device:{kid}" if _THUMBPRINT.fullmatch(kid) else "device:unknown"
        await self._audit(
            "sad.refused",
            actor=actor,
            subject=f"request:{request_id}",
            outcome=f"refused:{error.code}",
            details={"sad_sha256": sad_digest},
        )

    async def _audit(
        self,
        event: str,
        *,
        actor: str,
        subject: str,
        outcome: str,
        details: dict[str, Any],
    ) -> None:
        await self._store.append_audit(
            time=self._clock(),
            event=event,
            actor=actor,
            subject=subject,
            outcome=outcome,
            details=details,
        )
