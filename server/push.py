"""Web Push of approval challenges (RFC 8030, RFC 8291, RFC 8292).

pywebpush encrypts each message (aes128gcm) for the subscription's keys and
posts it with a VAPID header; this module decides what is sent and what an
answer means (PUSH-1 to PUSH-3). The plaintext holds the request id and nonce
only: the device fetches the details over its authenticated channel.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from pywebpush import WebPusher, WebPushException

from store import Device, DeviceStatus, SignatureRequest, Store

__all__ = [
    "PushSender",
    "check_push_endpoint",
    "check_push_keys",
    "load_or_create_vapid",
    "topic_for",
    "vapid_public_key",
]

log = logging.getLogger(__name__)

# A VAPID token may be reused until it expires (RFC 8292, section 2); one per
# push service origin spares a signature per message.
_VAPID_LIFETIME = 12 * 3600
_VAPID_REFRESH = 600
_MAX_RETRY_AFTER = 30.0


def topic_for(request_id: str) -> str:
    """A Topic header value (RFC 8030, 5.4): 32 base64url characters at most."""
    digest = hashlib.sha256(request_id.encode("utf-8")).digest()[:24]
    return base64.urlsafe_b64encode(digest).decode("ascii")


def vapid_public_key(vapid: Vapid02) -> str:
    raw = vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def load_or_create_vapid(path: Path) -> Vapid02:
    """Load the VAPID key pair, making it (mode 0600) on first use."""
    if path.exists():
        return Vapid02.from_file(str(path))
    vapid = Vapid02()
    vapid.generate_keys()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = vapid.private_pem()
    fd = path.open("xb")
    try:
        path.chmod(0o600)
        fd.write(pem)
    finally:
        fd.close()
    return vapid


class PushSender:
    """Sends one encrypted challenge to every active device of the signer."""

    def __init__(
        self,
        *,
        store: Store,
        vapid: Vapid02,
        subject: str,
        session: aiohttp.ClientSession,
        timeout: float = 10.0,
    ) -> None:
        self._store = store
        self._vapid = vapid
        self._subject = subject
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._tokens: dict[str, tuple[float, dict[str, str]]] = {}

    async def notify(self, request: SignatureRequest, devices: list[Device]) -> int:
        """Push the challenge to the signer's ``devices``; return how many
        accepted it. One failing subscription never stops the others (PUSH-3).
        """
        devices = [
            d
            for d in devices
            if d.user_id == request.user_id
            and d.status is DeviceStatus.ACTIVE
            and d.push_subscription
        ]
        if not devices:
            log.info("request %s: no device can be pushed to", request.request_id)
            return 0
        results = await asyncio.gather(
            *(self._send_one(d, request) for d in devices), return_exceptions=True
        )
        sent = 0
        for device, result in zip(devices, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "push to device %s failed: %s",
                    device.device_id,
                    type(result).__name__,
                )
            elif result:
                sent += 1
        return sent

    async def _send_one(self, device: Device, request: SignatureRequest) -> bool:
        subscription = device.push_subscription
        if subscription is None:
            return False
        endpoint = str(subscription["endpoint"])
        payload = json.dumps(
            {"rid": request.request_id, "nonce": request.nonce}, separators=(",", ":")
        )
        try:
            # pywebpush does the RFC 8291 encryption; the transport is ours so
            # that redirects are never followed (an endpoint must not bounce
            # the server elsewhere).
            body = WebPusher(subscription).encode(payload.encode(), "aes128gcm")["body"]
        except (WebPushException, ValueError, TypeError) as e:
            log.warning(
                "push to device %s not encrypted: %s",
                device.device_id,
                type(e).__name__,
            )
            return False
        for attempt in range(2):
            ttl = max(1, int((request.expires_at - datetime.now(UTC)).total_seconds()))
            headers = {
                "Content-Encoding": "aes128gcm",
                "Content-Type": "application/octet-stream",
                "TTL": str(ttl),
                "Urgency": "high",
                "Topic": topic_for(request.request_id),
                **self._vapid_headers(endpoint),
            }
            try:
                async with self._session.post(
                    endpoint,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._timeout,
                ) as response:
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                log.warning(
                    "push to device %s could not be delivered: %s",
                    device.device_id,
                    type(e).__name__,
                )
                return False
            if status in (200, 201, 202):
                log.debug(
                    "pushed request %s to %s", request.request_id, device.device_id
                )
                return True
            if status in (404, 410):
                # The subscription is gone for good (RFC 8030, 7.3).
                await self._store.clear_push_subscription(device.device_id, endpoint)
                await self._store.append_audit(
                    time=datetime.now(UTC),
                    event="device.subscription_removed",
                    actor="server",
                    subject=f"device:{device.device_id}",
                    outcome=f"push_status:{status}",
                )
                log.info(
                    "device %s: push subscription removed (%s)",
                    device.device_id,
                    status,
                )
                return False
            if status == 429 and attempt == 0:
                delay = _retry_after(retry_after)
                if delay is not None and delay <= min(_MAX_RETRY_AFTER, ttl - 1):
                    log.warning("push service asks to wait %.1f s", delay)
                    await asyncio.sleep(delay)
                    continue
            # 3xx, 413, 429 without a usable Retry-After, 5xx: the device can
            # still find the request by polling (PUSH-2).
            log.warning(
                "push to device %s refused with status %s", device.device_id, status
            )
            return False
        return False

    def _vapid_headers(self, endpoint: str) -> dict[str, str]:
        parts = urlsplit(endpoint)
        origin = f"{parts.scheme}://{parts.netloc}"
        now = time.time()
        cached = self._tokens.get(origin)
        if cached is None or cached[0] - now < _VAPID_REFRESH:
            expires = int(now) + _VAPID_LIFETIME
            claims = {"sub": self._subject, "aud": origin, "exp": expires}
            cached = (float(expires), dict(self._vapid.sign(claims)))
            self._tokens[origin] = cached
        return cached[1]


def check_push_keys(keys: dict[str, str]) -> str | None:
    """Why a subscription's keys are unusable, or ``None`` (RFC 8291, 3.2):
    ``p256dh`` is an uncompressed P-256 point, ``auth`` 16 random octets."""
    try:
        p256dh = base64.urlsafe_b64decode(keys["p256dh"] + "==")
        auth = base64.urlsafe_b64decode(keys["auth"] + "==")
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except (KeyError, ValueError, binascii.Error):
        return "the push subscription's p256dh is not a P-256 public key"
    if len(p256dh) != 65:
        return "the push subscription's p256dh must be an uncompressed point"
    if len(auth) != 16:
        return "the push subscription's auth secret must be 16 bytes"
    return None


def check_push_endpoint(endpoint: str, *, allow_http: bool) -> str | None:
    """Why a subscription endpoint is refused, or ``None`` when it is fine.

    Browsers' push services are HTTPS; plain HTTP is for a development phone
    on loopback. Credentials in the URL are never accepted.
    """
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return "the push endpoint is not a valid URL"
    if parts.scheme != "https" and not (parts.scheme == "http" and allow_http):
        return "the push endpoint must be an https URL"
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return "the push endpoint must name a host and carry no credentials"
    if port == 0:
        return "the push endpoint has no valid port"
    # TODO(ssrf): the host is not checked against private and link-local
    # address ranges; a deployment without an egress proxy should add that.
    return None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
