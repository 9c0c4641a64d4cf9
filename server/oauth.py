"""OAuth 2.0 client credentials (RFC 6749, 4.4) for relying apps (AUTH-1).

A relying app's OAuth ``client_id`` is its client id and its
``client_secret`` is its API key, so ``sigil client create`` provisions both.
``POST /oauth2/token`` trades them for a bearer access token; the API key
itself keeps working as a bearer credential too.

Access tokens are stateless: a compact JWS (HS256) over ``iss``, ``sub`` (the
client id), ``scope``, ``iat``, ``exp`` and ``jti``, under a secret the
server makes once and keeps as a store setting. Revoking the client ends its
tokens (within the authenticator's cache time). Tokens and secrets are never
logged, shown in a repr or echoed in an error (SAD-6).
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from server.auth import api_key_hash, invalid_token
from server.errors import ApiError
from server.shared_secret import load_shared_secret
from store import Client, Store

__all__ = [
    "ACCESS_TOKENS",
    "SCOPES",
    "AccessToken",
    "AccessTokens",
    "issue_token",
    "load_token_secret",
    "read_token",
    "routes",
]

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

SCOPES = ("service", "credential")
TOKEN_TYPE = "rp-access+jwt"  # noqa: S105 - a JWS typ, not a secret
TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a path, not a secret
MAX_TOKEN_CHARS = 8 * 1024

_SECRET_SETTING = "oauth.token_secret"  # noqa: S105 - a setting's name
_MAX_FORM_BYTES = 4 * 1024
_MAX_FIELDS = 16
_MAX_FIELD_CHARS = 512
_MAX_BASIC_CHARS = 1024
_MAX_FUTURE_IAT = 60
_FORM_TYPE = "application/x-www-form-urlencoded"
# RFC 6749, A.4: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KNOWN_FIELDS = frozenset({"grant_type", "scope", "client_id", "client_secret"})


@dataclass(frozen=True, slots=True)
class AccessToken:
    """What a verified access token says."""

    client_id: str
    scopes: frozenset[str]
    expires_at: int


def issue_token(
    key: bytes,
    *,
    issuer: str,
    client_id: str,
    scopes: Iterable[str],
    ttl: int,
    now: float | None = None,
) -> str:
    """A signed access token for ``client_id``, valid ``ttl`` seconds from
    ``now`` (the current time by default)."""
    issued = int(time.time() if now is None else now)
    granted = set(scopes)
    claims = {
        "iss": issuer,
        "sub": client_id,
        "scope": " ".join(s for s in SCOPES if s in granted),
        "iat": issued,
        "exp": issued + ttl,
        "jti": secrets.token_urlsafe(16),
    }
    return jws.serialize_compact(
        {"alg": "HS256", "typ": TOKEN_TYPE},
        json.dumps(claims, separators=(",", ":")),
        OctKey.import_key(key),
        algorithms=["HS256"],
    )


def read_token(
    token: str, key: bytes, *, issuer: str, now: float | None = None
) -> AccessToken:
    """Verify an access token; raise a 401 ``invalid_token`` if it fails."""
    if len(token) > MAX_TOKEN_CHARS:
        raise invalid_token("the access token is too large")
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeError, TypeError) as e:
        raise invalid_token("the access token is not a compact JWS") from e
    if header.get("alg") != "HS256" or header.get("typ") != TOKEN_TYPE:
        raise invalid_token("the access token is not one this server issues")
    try:
        verified = jws.deserialize_compact(
            token, OctKey.import_key(key), algorithms=["HS256"]
        )
        claims: Any = json.loads(verified.payload)
    except (JoseError, ValueError, UnicodeError, TypeError) as e:
        raise invalid_token("the access token does not verify") from e
    if not isinstance(claims, dict):
        raise invalid_token("the access token's payload is not an object")
    if claims.get("iss") != issuer:
        raise invalid_token("the access token is for another server")
    sub, scope = claims.get("sub"), claims.get("scope")
    iat, exp = _int_claim(claims, "iat"), _int_claim(claims, "exp")
    if (
        not isinstance(sub, str)
        or not sub
        or not isinstance(scope, str)
        or iat is None
        or exp is None
        or not isinstance(claims.get("jti"), str)
    ):
        raise invalid_token("the access token lacks a claim")
    current = time.time() if now is None else now
    if exp <= current:
        raise invalid_token("the access token has expired")
    if iat > current + _MAX_FUTURE_IAT:
        raise invalid_token("the access token was issued in the future")
    scopes = frozenset(scope.split(" ")) & frozenset(SCOPES)
    return AccessToken(client_id=sub, scopes=scopes, expires_at=exp)


def _int_claim(claims: dict[str, Any], name: str) -> int | None:
    value = claims.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def load_token_secret(store: Store) -> bytes:
    """The secret tokens are signed with, shared by every process."""
    return await load_shared_secret(store, _SECRET_SETTING)


class AccessTokens:
    """Issues and verifies this installation's access tokens."""

    def __init__(self, store: Store, *, issuer: str, ttl: int) -> None:
        self.store = store
        self.issuer = issuer
        self.ttl = ttl
        self._key: bytes | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"AccessTokens(issuer={self.issuer!r}, ttl={self.ttl})"

    async def _secret(self) -> bytes:
        if self._key is None:
            async with self._lock:
                if self._key is None:
                    self._key = await load_token_secret(self.store)
        return self._key

    async def issue(
        self, client_id: str, scopes: Iterable[str], *, now: float | None = None
    ) -> str:
        return issue_token(
            await self._secret(),
            issuer=self.issuer,
            client_id=client_id,
            scopes=scopes,
            ttl=self.ttl,
            now=now,
        )

    async def verify(self, token: str, *, now: float | None = None) -> AccessToken:
        return read_token(token, await self._secret(), issuer=self.issuer, now=now)


ACCESS_TOKENS = web.AppKey("access_tokens", AccessTokens)


# -- the token endpoint -----------------------------------------------------

_BASIC = 'Basic realm="sigil", charset="UTF-8"'
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(error: str, description: str) -> ApiError:
    return ApiError(400, error, description)


def _invalid_client(description: str) -> ApiError:
    return ApiError(
        401, "invalid_client", description, headers={"WWW-Authenticate": _BASIC}
    )


async def _read_form(request: web.Request) -> dict[str, str]:
    """The form fields, each once; blank ones count as absent (RFC 6749, 3.1)."""
    if request.content_type != _FORM_TYPE:
        raise _oauth_error(
            "invalid_request", f"the body must be {_FORM_TYPE} (RFC 6749, 4.4.2)"
        )
    too_large = _oauth_error(
        "invalid_request", f"the body is over {_MAX_FORM_BYTES} bytes"
    )
    if (request.content_length or 0) > _MAX_FORM_BYTES:
        raise too_large
    raw = bytearray()
    async for chunk in request.content.iter_any():
        raw += chunk
        if len(raw) > _MAX_FORM_BYTES:
            raise too_large
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=True,
            errors="strict",
            max_num_fields=_MAX_FIELDS,
        )
    except (ValueError, UnicodeError) as e:
        # Not the parser's message: it quotes the field (SAD-6).
        raise _oauth_error("invalid_request", "the body is not a valid form") from e
    form: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        shown = name if name in _KNOWN_FIELDS else "a field"
        if name in seen:
            raise _oauth_error("invalid_request", f"{shown} is repeated")
        seen.add(name)
        if len(value) > _MAX_FIELD_CHARS or _CONTROL.search(name + value):
            raise _oauth_error(
                "invalid_request", f"{shown} is too long or has control characters"
            )
        if value:
            form[name] = value
    return form


def _scopes(form: dict[str, str]) -> tuple[str, ...]:
    requested = form.get("scope")
    if requested is None:
        return SCOPES
    tokens = requested.split(" ")
    if not all(_SCOPE_TOKEN.fullmatch(t) for t in tokens):
        raise _oauth_error("invalid_scope", "scope is not a space-separated list")
    unknown = set(tokens) - set(SCOPES)
    if unknown:
        raise _oauth_error("invalid_scope", "scope may name only: " + " ".join(SCOPES))
    return tuple(s for s in SCOPES if s in tokens)


def _basic_credentials(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise _invalid_client(
            "authenticate with HTTP Basic or the client_id and client_secret fields"
        )
    if len(encoded) > _MAX_BASIC_CHARS:
        raise _invalid_client("the Basic credentials are too large")
    try:
        decoded = binascii.a2b_base64(encoded.strip(), strict_mode=True).decode()
        user, colon, password = decoded.partition(":")
        if not colon:
            raise ValueError("no colon")
        # RFC 6749, 2.3.1: both are form-encoded before Basic encodes them.
        client_id = unquote_plus(user, errors="strict")
        secret = unquote_plus(password, errors="strict")
    except (binascii.Error, ValueError, UnicodeError) as e:
        raise _invalid_client("the Basic credentials cannot be read") from e
    if _CONTROL.search(client_id + secret):
        raise _invalid_client("the Basic credentials cannot be read")
    return client_id, secret


def _client_credentials(request: web.Request, form: dict[str, str]) -> tuple[str, str]:
    header = request.headers.get("Authorization")
    if header is not None:
        client_id, secret = _basic_credentials(header)
        # RFC 6749, 2.3: one authentication method per request.
        if "client_secret" in form:
            raise _oauth_error(
                "invalid_request",
                "send the client secret either by HTTP Basic or in the body",
            )
        if form.get("client_id", client_id) != client_id:
            raise _oauth_error(
                "invalid_request", "client_id differs from the Basic credentials"
            )
    else:
        client_id = form.get("client_id", "")
        secret = form.get("client_secret", "")
    if not client_id or not secret:
        raise _invalid_client(
            "client authentication is required: HTTP Basic (client_secret_basic)"
            " or client_id and client_secret (client_secret_post)"
        )
    return client_id, secret


async def _authenticate(store: Store, client_id: str, secret: str) -> Client:
    client = await store.client_by_key_hash(api_key_hash(secret))
    if client is None or client.client_id != client_id:
        raise _invalid_client("the client id or secret is not valid")
    if client.revoked_at is not None:
        raise _invalid_client("the client was revoked")
    return client


@routes.post(TOKEN_PATH)
async def token(request: web.Request) -> web.Response:
    """The token endpoint: client credentials grant only."""
    tokens = request.app[ACCESS_TOKENS]
    form = await _read_form(request)
    grant_type = form.get("grant_type")
    if grant_type is None:
        raise _oauth_error("invalid_request", "grant_type is required")
    if grant_type != "client_credentials":
        raise _oauth_error(
            "unsupported_grant_type", "the only grant type is client_credentials"
        )
    scopes = _scopes(form)
    client_id, secret = _client_credentials(request, form)
    client = await _authenticate(tokens.store, client_id, secret)
    access_token = await tokens.issue(client.client_id, scopes)
    log.debug("client %s got an access token for %s", client.client_id, scopes)
    return web.json_response(
        {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": tokens.ttl,
            "scope": " ".join(scopes),
        },
        headers=_NO_STORE,
    )
