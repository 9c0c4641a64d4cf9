"""The device side of the device API: signed calls and SADs over HTTP.

Implements the client half of docs/api.md: the Device JWS on every call
(AUTH-2) and Signature Activation Data (SAD-1, SAD-2), with the device key
of device_key.py. SimulatedPhone builds on it; server tests may use it
alone to make hostile calls.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec
from yarl import URL

from ._b64 import b64url_encode
from .device_key import DROP, SAD_TYP, DeviceKey, DropType, apply_overrides
from .errors import MalformedResponseError, NotEnrolledError, ServerResponseError

__all__ = ["DEFAULT_SAD_LIFETIME", "DeviceClient", "request_path", "sad_digest"]

DEFAULT_SAD_LIFETIME: Final = 120


def sad_digest(sad: str) -> str:
    """A short SHA-256 prefix that names a SAD in logs (SAD-6)."""
    return hashlib.sha256(sad.encode("utf-8")).hexdigest()[:16]


def request_path(request_id: str, action: str = "") -> str:
    """The device API path of a request, or of its approve or reject action."""
    path = f"/device/v1/requests/{quote(request_id, safe='')}"
    return f"{path}/{action}" if action else path


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


class DeviceClient:
    """Signs device calls and SADs with one device key.

    Use it as ``async with`` unless a session is given.
    """

    def __init__(
        self,
        server_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        device_key: DeviceKey | None = None,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self._given_session = session
        self._session = session
        self._key = device_key or DeviceKey()
        self._audience: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device_id={self.device_id!r})"

    async def __aenter__(self) -> Self:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close_session()

    async def _close_session(self) -> None:
        if self._session is not None and self._given_session is None:
            await self._session.close()
        self._session = self._given_session

    @property
    def device_id(self) -> str:
        """The RFC 7638 thumbprint of the device's public JWK."""
        return self._key.device_id

    @property
    def device_key(self) -> ec.EllipticCurvePrivateKey:
        return self._key.private_key

    @property
    def public_jwk(self) -> dict[str, str]:
        return self._key.public_jwk()

    @property
    def audience(self) -> str | None:
        """The server's SAD audience, from the enrolment challenge."""
        return self._audience

    @audience.setter
    def audience(self, audience: str | None) -> None:
        self._audience = audience

    # -- HTTP ----------------------------------------------------------------------

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"use 'async with {type(self).__name__}(...)'")
        return self._session

    def url(self, path: str) -> URL:
        """The server URL of a path that starts with a slash."""
        if not path.startswith("/"):
            raise ValueError("a device API path starts with '/'")
        return URL(self.server_url + path)

    async def _send(
        self, method: str, url: URL, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any]:
        if body:
            headers.setdefault("Content-Type", "application/json")
        async with self._require_session().request(
            method, url, data=body or None, headers=headers, allow_redirects=False
        ) as response:
            return response.status, _parse_body(await response.read())

    def device_authorization(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        embed_jwk: bool = False,
        iat: int | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> str:
        """The ``Authorization: Device <JWS>`` value for one call.

        ``overrides`` replace, insert or (with DROP) remove payload claims,
        for crafting calls the server must refuse.
        """
        token = self._key.device_call_token(
            method,
            self.url(path).raw_path_qs,
            body,
            embed_jwk=embed_jwk,
            iat=iat,
            overrides=overrides,
        )
        return f"Device {token}"

    async def call(
        self,
        method: str,
        path: str,
        json_body: Any | None = None,
        *,
        raw_body: bytes | None = None,
        embed_jwk: bool = False,
        authorization: str | DropType | None = None,
        capture: list[str] | None = None,
    ) -> tuple[int, Any]:
        """A device call signed with a Device JWS; returns status and body.

        The body goes out as exactly the bytes its ``bh`` claim hashes; the
        ``htu`` claim is the URL's raw path and query. ``authorization``
        replaces the header, or with DROP leaves it out; ``capture`` receives
        the header sent, for replaying it.
        """
        if json_body is not None and raw_body is not None:
            raise ValueError("give json_body or raw_body, not both")
        if raw_body is not None:
            body = raw_body
        elif json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode("utf-8")
        else:
            body = b""

        headers: dict[str, str] = {}
        if authorization is None:
            headers["Authorization"] = self.device_authorization(
                method, path, body, embed_jwk=embed_jwk
            )
        elif authorization is not DROP:
            headers["Authorization"] = authorization
        if capture is not None and "Authorization" in headers:
            capture.append(headers["Authorization"])
        return await self._send(method.upper(), self.url(path), body, headers)

    async def fetch(self, request_id: str) -> dict[str, Any]:
        """GET the request details; raises ServerResponseError unless 200."""
        status, body = await self.call("GET", request_path(request_id))
        if status != 200 or not isinstance(body, dict):
            raise ServerResponseError("fetching the request", status, body)
        return body

    async def approve(
        self,
        request_id: str,
        sad: str,
        *,
        pin: str | None = None,
        otp: str | None = None,
    ) -> tuple[int, Any]:
        """Approve with a SAD and, where the signer's policy asks, the PIN
        or a one-time code (AUTH-3)."""
        body = {"sad": sad}
        if pin is not None:
            body["pin"] = pin
        if otp is not None:
            body["otp"] = otp
        return await self.call("POST", request_path(request_id, "approve"), body)

    async def reject(self, request_id: str, sad: str) -> tuple[int, Any]:
        return await self.call("POST", request_path(request_id, "reject"), {"sad": sad})

    async def pending_request_ids(self) -> list[str]:
        """GET /device/v1/requests: ids of the pending requests for this device."""
        status, body = await self.call("GET", "/device/v1/requests")
        if status != 200:
            raise ServerResponseError("listing requests", status, body)
        entries = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise MalformedResponseError("the request list lacks requests")
        ids = []
        for entry in entries:
            rid = entry.get("request_id") if isinstance(entry, dict) else None
            if not isinstance(rid, str):
                raise MalformedResponseError("a listed request lacks request_id")
            ids.append(rid)
        return ids

    # -- SAD -----------------------------------------------------------------------

    def make_sad(
        self,
        details: Mapping[str, Any],
        *,
        decision: str = "approve",
        vc: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        header_overrides: Mapping[str, Any] | None = None,
        iat: int | None = None,
        lifetime: int = DEFAULT_SAD_LIFETIME,
    ) -> str:
        """The SAD over request details as GET /device/v1/requests/{id} gives them.

        ``vc`` None leaves the claim out. ``overrides`` replace or insert
        claims and ``header_overrides`` header members; a value of DROP
        removes one. Meant also for crafting hostile SADs in server tests.
        """
        if self._audience is None:
            raise NotEnrolledError("no audience: enrol or call trust_server first")
        try:
            hashes = [str(h) for h in details["hashes"]]
            display_text = details["display_text"].encode("utf-8")
            claims: dict[str, Any] = {
                "iss": self.device_id,
                "aud": self._audience,
                "rid": details["request_id"],
                "cid": details["credential_id"],
                "halg": details["hash_algorithm"],
                "hashes": hashes,
                "numSignatures": len(hashes),
                "nonce": details["nonce"],
                "dth": b64url_encode(hashlib.sha256(display_text).digest()),
            }
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError("the request details lack a field the SAD binds") from e
        if vc is not None:
            claims["vc"] = vc
        issued = int(time.time()) if iat is None else iat
        claims.update(decision=decision, iat=issued, exp=issued + lifetime)

        header = {"alg": "ES256", "typ": SAD_TYP, "kid": self.device_id}
        return self._key.sign(
            apply_overrides(header, header_overrides),
            apply_overrides(claims, overrides),
        )
