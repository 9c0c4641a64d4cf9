"""The SAD a CSC client holds: an opaque token for one approved authorisation.

The device-signed approval never leaves the server. What the CSC client gets
back from ``credentials/authorizeCheck`` is ``<request id>.<MAC>``, where the
MAC (HMAC-SHA256 under a server secret) covers the request, its credential,
the digest of the device's SAD, every authorised hash, the number of
signatures and the time until which it may be spent. Changing any of them,
or extending the authorisation, gives another token; the old one no longer
verifies. Nothing secret is stored: the token is checked by computing it
again from the stored request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from store import SignatureRequest
from store.audit import canonical_json, format_time

__all__ = ["mint_token", "token_matches", "token_request_id"]

_TOKEN = re.compile(r"([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_-]{43})")


def _mac(secret: bytes, request: SignatureRequest) -> str:
    if request.authorized_until is None or request.sad_digest is None:
        raise ValueError("the request is not an approved CSC authorisation")
    bound = canonical_json(
        [
            "sigil-csc-sad-1",
            request.request_id,
            request.credential_id,
            request.sad_digest,
            request.hash_algorithm,
            list(request.hashes),
            request.num_signatures,
            format_time(request.authorized_until),
        ]
    )
    digest = hmac.new(secret, bound.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def mint_token(secret: bytes, request: SignatureRequest) -> str:
    """The SAD to hand to the CSC client for an approved authorisation."""
    return f"{request.request_id}.{_mac(secret, request)}"


def token_request_id(token: str) -> str | None:
    """The request a well-formed token names; ``None`` for anything else."""
    match = _TOKEN.fullmatch(token)
    return match.group(1) if match else None


def token_matches(secret: bytes, token: str, request: SignatureRequest) -> bool:
    """True when ``token`` is the current SAD of ``request``."""
    match = _TOKEN.fullmatch(token)
    if match is None or match.group(1) != request.request_id:
        return False
    try:
        expected = _mac(secret, request)
    except ValueError:
        return False
    return hmac.compare_digest(match.group(2), expected)
