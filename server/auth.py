"""Who is calling: relying apps by API key or OAuth2 access token (AUTH-1),
devices by signature (AUTH-2).

A device signs every call with its key: a compact JWS over the method, the
path, a hash of the exact body, the time and a single-use id, in the manner
of OAuth DPoP (RFC 9449) but bound to the body as well.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from server.errors import ApiError
from store import Client, Device, DeviceStatus, Store

if TYPE_CHECKING:
    from server.oauth import AccessTokens

__all__ = [
    "ClientAuthenticator",
    "DeviceAuthenticator",
    "DeviceProof",
    "api_key_hash",
    "invalid_token",
    "new_api_key",
]

log = logging.getLogger(__name__)

CALL_TYPE = "dev-call+jwt"
MAX_SKEW = timedelta(seconds=60)
_MAX_AUTH_BYTES = 8 * 1024


def new_api_key() -> str:
    return "sk_" + secrets.token_urlsafe(32)


def api_key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unauthorized(description: str, scheme: str = "Device") -> ApiError:
    return ApiError(
        401, "unauthorized", description, headers={"WWW-Authenticate": scheme}
    )


def invalid_token(description: str) -> ApiError:
    """A refused OAuth2 access token (RFC 6750, 3.1)."""
    return ApiError(
        401,
        "invalid_token",
        description,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def _is_access_token(credential: str) -> bool:
    # API keys are "sk_" and base64url, never dotted; tokens are compact JWS.
    return not credential.startswith("sk_") and credential.count(".") == 2


class ClientAuthenticator:
    """Finds the relying app by the API key or the OAuth2 access token in
    ``Authorization: Bearer``.

    Known keys, and the clients that tokens name, are remembered for ``ttl``
    seconds, which spares a store read on every call of a busy relying app.
    Unknown keys are never remembered.
    """

    def __init__(
        self, store: Store, *, ttl: float = 30.0, tokens: AccessTokens | None = None
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._tokens = tokens
        self._known: dict[str, tuple[float, Client]] = {}
        self._by_id: dict[str, tuple[float, Client]] = {}

    async def verify(self, request: web.Request, *, scope: str | None = None) -> Client:
        """The calling relying app. An API key holds every scope; an access
        token must hold ``scope``, when one is asked, or the call gets 403
        ``insufficient_scope``."""
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _unauthorized(
                "an API key is required: Authorization: Bearer <key>", "Bearer"
            )
        if self._tokens is not None and _is_access_token(key.strip()):
            return await self._verify_token(self._tokens, key.strip(), scope)
        digest = api_key_hash(key.strip())
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and known[0] > now:
            return known[1]
        # A key revoked by `sigil client revoke` (another process) keeps
        # working here for at most ``ttl`` seconds.
        client = await self._store.client_by_key_hash(digest)
        if client is None:
            raise _unauthorized("the API key is not valid", "Bearer")
        if client.revoked_at is not None:
            raise _unauthorized("the API key was revoked", "Bearer")
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[digest] = (now + self._ttl, client)
        return client

    async def _verify_token(
        self, tokens: AccessTokens, token: str, scope: str | None
    ) -> Client:
        access = await tokens.verify(token)
        client = await self._client_by_id(access.client_id)
        if client is None:
            raise invalid_token("the access token's client is unknown")
        if client.revoked_at is not None:
            raise invalid_token("the client was revoked")
        if scope is not None and scope not in access.scopes:
            raise ApiError(
                403,
                "insufficient_scope",
                f"the access token lacks the scope {scope}",
                headers={
                    "WWW-Authenticate": (
                        f'Bearer error="insufficient_scope", scope="{scope}"'
                    )
                },
            )
        return client

    async def _client_by_id(self, client_id: str) -> Client | None:
        now = time.monotonic()
        known = self._by_id.get(client_id)
        if known is not None and known[0] > now:
            return known[1]
        # The store looks clients up by key hash only; relying apps are few.
        found = [
            c for c in await self._store.list_clients() if c.client_id == client_id
        ]
        if not found:
            return None
        if found[0].revoked_at is None:
            if len(self._by_id) > 10_000:
                self._by_id.clear()
            self._by_id[client_id] = (now + self._ttl, found[0])
        return found[0]


@dataclass(frozen=True, slots=True)
class DeviceProof:
    """A verified device call: the device (if known) and its public JWK."""

    device_id: str
    public_jwk: dict[str, Any]
    device: Device | None


class DeviceAuthenticator:
    """Verifies the ``Authorization: Device <JWS>`` of every device call."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._keys: dict[str, ECKey] = {}

    async def verify(
        self, request: web.Request, body: bytes, *, enrolment: bool = False
    ) -> DeviceProof:
        token = self._token(request)
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError) as e:
            raise _unauthorized("the device signature is not a compact JWS") from e
        if header.get("alg") != "ES256" or header.get("typ") != CALL_TYPE:
            raise _unauthorized(
                f"the device signature must be ES256 of typ {CALL_TYPE}"
            )

        device: Device | None = None
        if enrolment:
            jwk = header.get("jwk")
            if not isinstance(jwk, dict) or "d" in jwk:
                raise _unauthorized("the enrolment signature must carry a public jwk")
            key = self._import(jwk)
            device_id = key.thumbprint()
        else:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise _unauthorized("the device signature has no kid")
            device = await self._store.get_device(kid)
            if device is None:
                raise _unauthorized("the device is not enrolled")
            if device.status is not DeviceStatus.ACTIVE:
                raise ApiError(403, "device_revoked", "the device has been revoked")
            device_id = device.device_id
            jwk = device.public_key_jwk
            key = self._keys.get(device_id) or self._import(jwk)
            self._keys[device_id] = key

        try:
            verified = jws.deserialize_compact(token, key, algorithms=["ES256"])
            claims = json.loads(verified.payload)
        except (JoseError, ValueError) as e:
            raise _unauthorized("the device signature does not verify") from e
        if not isinstance(claims, dict):
            raise _unauthorized("the device signature payload is not an object")
        await self._check_claims(claims, request, body, device_id)
        return DeviceProof(device_id=device_id, public_jwk=dict(jwk), device=device)

    @staticmethod
    def _token(request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme != "Device" or not token:
            raise _unauthorized("a device signature is required: Authorization: Device")
        if len(token) > _MAX_AUTH_BYTES:
            raise _unauthorized("the device signature is too large")
        return token.strip()

    @staticmethod
    def _import(jwk: dict[str, Any]) -> ECKey:
        if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
            raise _unauthorized("the device key must be an EC P-256 key")
        try:
            return ECKey.import_key(jwk)
        except (JoseError, ValueError, TypeError) as e:
            raise _unauthorized("the device key cannot be read") from e

    async def _check_claims(
        self,
        claims: dict[str, Any],
        request: web.Request,
        body: bytes,
        device_id: str,
    ) -> None:
        if claims.get("htm") != request.method:
            raise _unauthorized("the device signature is for another method")
        if claims.get("htu") != request.raw_path:
            raise _unauthorized("the device signature is for another path")
        if claims.get("bh") != b64url(hashlib.sha256(body).digest()):
            raise _unauthorized("the device signature does not cover this body")
        iat = claims.get("iat")
        now = datetime.now(UTC)
        if not isinstance(iat, int) or isinstance(iat, bool):
            raise _unauthorized("the device signature has no iat")
        if abs(now.timestamp() - iat) > MAX_SKEW.total_seconds():
            raise _unauthorized("the device signature is too old or in the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 8 <= len(jti) <= 128:
            raise _unauthorized("the device signature has no valid jti")
        fresh = await self._store.use_once(
            "device-call", f"{device_id}:{jti}", expires_at=now + 2 * MAX_SKEW
        )
        if not fresh:
            raise _unauthorized("the device signature was already used")
