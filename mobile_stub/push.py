"""The phone's Web Push endpoint, served on loopback.

It plays the push service and the phone's user agent at once, checking what
each would check: RFC 8292 VAPID (the ``vapid`` authentication scheme with
``t`` and ``k``), the RFC 8030 ``TTL``, ``Urgency`` and ``Topic`` headers, and
RFC 8291 message encryption in the RFC 8188 ``aes128gcm`` content coding.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import http_ece
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from ._b64 import b64url_decode, b64url_encode

__all__ = ["PushReceiver", "PushRefused", "ReceivedPush", "verify_vapid"]

logger = logging.getLogger(__name__)

# RFC 8030 section 7.2: a push service must accept at least 4096 octets.
MAX_PUSH_BODY: Final = 4096
# RFC 8292 section 2: exp no further than 24 hours from the request.
MAX_VAPID_LIFETIME: Final = 24 * 60 * 60
URGENCIES: Final = frozenset({"very-low", "low", "normal", "high"})
# RFC 8030 section 5.4: at most 32 characters of the base64url alphabet.
_TOPIC: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
_DIGITS: Final = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True)
class ReceivedPush:
    """One push message the endpoint accepted, with its decrypted JSON."""

    ttl: int
    urgency: str
    topic: str
    message: Any
    received_at: float


class PushRefused(Exception):
    """The endpoint refuses a push message with this HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _unauthorized(reason: str) -> PushRefused:
    return PushRefused(401, reason)


def _parse_vapid_header(authorization: str | None) -> tuple[str, str]:
    """Split ``vapid t=<JWT>, k=<key>`` (RFC 8292 section 3) into t and k."""
    if not authorization:
        raise _unauthorized("no Authorization header")
    scheme, _, params = authorization.strip().partition(" ")
    if scheme.lower() != "vapid":
        raise _unauthorized("the authentication scheme is not vapid")

    parts: dict[str, str] = {}
    for item in params.split(","):
        name, sep, value = item.strip().partition("=")
        name = name.strip().lower()
        if not sep or not name or name in parts:
            raise _unauthorized("malformed vapid parameters")
        parts[name] = value.strip().strip('"')
    if "t" not in parts or "k" not in parts:
        raise _unauthorized("the vapid parameters t and k are both required")
    return parts["t"], parts["k"]


def verify_vapid(
    authorization: str | None,
    *,
    trusted_key: bytes | None,
    audience: str,
    now: int | None = None,
) -> dict[str, Any]:
    """Check a VAPID Authorization header; return the JWT claims.

    ``trusted_key`` is the uncompressed P-256 point the subscription was made
    with (the server's ``vapid_public_key``); ``audience`` is the origin of
    the push endpoint. Raises PushRefused(401) on any failure.
    """
    token, key_text = _parse_vapid_header(authorization)
    if trusted_key is None:
        raise _unauthorized("the phone trusts no VAPID key yet")

    try:
        key_bytes = b64url_decode(key_text)
    except ValueError as e:
        raise _unauthorized("the vapid k parameter is not base64url") from e
    # RFC 8292 section 4.2: the key must be the one the subscription names.
    if not hmac.compare_digest(key_bytes, trusted_key):
        raise _unauthorized("the vapid key is not the subscription's key")

    try:
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), key_bytes
        )
    except ValueError as e:
        raise _unauthorized("the vapid key is not a P-256 point") from e

    try:
        decoded = jwt.decode(token, ECKey.import_key(public_key), algorithms=["ES256"])
    except (JoseError, ValueError) as e:
        raise _unauthorized("the vapid JWT does not verify") from e
    claims = decoded.claims

    if claims.get("aud") != audience:
        raise _unauthorized("the vapid aud is not the endpoint's origin")

    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise _unauthorized("the vapid exp is missing or not an integer")
    now = int(time.time()) if now is None else now
    if exp <= now:
        raise _unauthorized("the vapid JWT has expired")
    if exp > now + MAX_VAPID_LIFETIME:
        raise _unauthorized("the vapid exp is more than 24 hours ahead")

    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _unauthorized("the vapid sub is missing")
    return claims


def _check_headers(headers: Mapping[str, str]) -> tuple[int, str, str]:
    """The RFC 8030 delivery headers: TTL, Urgency and Topic."""
    encoding = headers.get("Content-Encoding", "")
    if encoding.strip().lower() != "aes128gcm":
        raise PushRefused(400, "Content-Encoding is not aes128gcm")

    ttl_text = headers.get("TTL", "").strip()
    if not _DIGITS.fullmatch(ttl_text):
        raise PushRefused(400, "TTL is missing or not a number")
    ttl = int(ttl_text)
    # PUSH-1: a TTL of 0 would drop the challenge whenever the phone sleeps.
    if ttl <= 0:
        raise PushRefused(400, "TTL is 0")

    urgency = headers.get("Urgency", "").strip().lower()
    if urgency not in URGENCIES:
        raise PushRefused(400, "Urgency is missing or unknown")

    topic = headers.get("Topic", "").strip()
    if not _TOPIC.fullmatch(topic):
        raise PushRefused(400, "Topic is missing or not 1 to 32 base64url chars")
    return ttl, urgency, topic


class PushReceiver:
    """An aiohttp endpoint on 127.0.0.1 that accepts, checks and decrypts pushes.

    Accepted messages go to ``on_push`` before the 201 answer leaves, so the
    callback must be quick; the phone hands the work to a task.
    """

    def __init__(
        self,
        *,
        on_push: Callable[[ReceivedPush], None],
        port: int = 0,
        token: str | None = None,
        private_key: ec.EllipticCurvePrivateKey | None = None,
        auth_secret: bytes | None = None,
    ) -> None:
        if auth_secret is not None and len(auth_secret) != 16:
            raise ValueError("an RFC 8291 auth secret is 16 bytes")
        self._on_push = on_push
        self._port = port
        self._token = token or secrets.token_urlsafe(16)
        self._private_key = private_key or ec.generate_private_key(ec.SECP256R1())
        self._auth_secret = auth_secret or secrets.token_bytes(16)
        self._runner: web.AppRunner | None = None
        self.trusted_vapid_key: bytes | None = None
        #: The status the endpoint answers; set 404 or 410 to play a
        #: subscription the push service has dropped, 429 or 5xx for trouble.
        self.status = 201
        #: Sent as Retry-After with a 429 or 503 status when set.
        self.retry_after: int | None = None
        #: Every POST to the endpoint's path, accepted or not.
        self.attempts = 0

    def __repr__(self) -> str:
        return f"PushReceiver(port={self._port}, running={self.running})"

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        return self._port

    @property
    def token(self) -> str:
        return self._token

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return self._private_key

    @property
    def auth_secret(self) -> bytes:
        return self._auth_secret

    @property
    def origin(self) -> str:
        if not self._port:
            raise RuntimeError("the push endpoint has no port before it starts")
        return f"http://127.0.0.1:{self._port}"

    @property
    def endpoint(self) -> str:
        return f"{self.origin}/push/{self._token}"

    def subscription(self) -> dict[str, Any]:
        """The subscription a browser's PushManager.subscribe() would give."""
        point = self._private_key.public_key().public_bytes(
            serialization.Encoding.X962,
            serialization.PublicFormat.UncompressedPoint,
        )
        return {
            "endpoint": self.endpoint,
            "keys": {
                "p256dh": b64url_encode(point),
                "auth": b64url_encode(self._auth_secret),
            },
        }

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(client_max_size=MAX_PUSH_BODY)
        app.router.add_post("/push/{token}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        logger.debug("push endpoint listening on port %s", self._port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not hmac.compare_digest(
            request.match_info["token"].encode(), self._token.encode()
        ):
            return web.json_response({"error": "not_found"}, status=404)
        self.attempts += 1

        if self.status != 201:
            headers = {}
            if self.retry_after is not None and self.status in (429, 503):
                headers["Retry-After"] = str(self.retry_after)
            logger.debug("push endpoint plays status %s", self.status)
            return web.json_response(
                {"error": "simulated", "error_description": f"status {self.status}"},
                status=self.status,
                headers=headers,
            )

        try:
            push = await self._accept(request)
        except PushRefused as e:
            logger.warning("push refused with %s: %s", e.status, e.reason)
            return web.json_response(
                {"error": "push_refused", "error_description": e.reason},
                status=e.status,
            )

        self._on_push(push)
        location = f"{self.origin}/message/{uuid.uuid4()}"
        return web.Response(status=201, headers={"Location": location})

    async def _accept(self, request: web.Request) -> ReceivedPush:
        verify_vapid(
            request.headers.get("Authorization"),
            trusted_key=self.trusted_vapid_key,
            audience=self.origin,
        )
        ttl, urgency, topic = _check_headers(request.headers)

        body = await request.read()
        if not body:
            raise PushRefused(400, "the push message has no body")
        try:
            plaintext = http_ece.decrypt(
                body,
                private_key=self._private_key,
                auth_secret=self._auth_secret,
                version="aes128gcm",
            )
        # http_ece raises its own error for a bad tag or padding, and lets
        # struct and key parsing errors through for a truncated header.
        except (http_ece.ECEException, struct.error, ValueError, IndexError) as e:
            raise PushRefused(400, "the body does not decrypt (RFC 8291)") from e

        try:
            message = json.loads(bytes(plaintext))
        except (UnicodeDecodeError, ValueError) as e:
            raise PushRefused(400, "the decrypted body is not JSON") from e
        return ReceivedPush(
            ttl=ttl,
            urgency=urgency,
            topic=topic,
            message=message,
            received_at=time.time(),
        )
