"""Signature Activation Data: the device-signed approval (SAD-1, SAD-2).

The SAD is a compact JWS, ES256, made by the device key registered to the
signer (EN 419241-2, SAD binding to signer, key and data to be signed). This
module reads the header without trust, verifies the signature with joserfc,
and turns the payload into typed claims. The checks of those claims against
a request live in :mod:`sam.activation`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from sam.errors import BadSadSignature, MalformedSad

__all__ = ["SAD_TYPE", "SadClaims", "SadHeader", "read_header", "verify_sad"]

SAD_TYPE = "sad+jwt"
_ALGORITHMS = ("ES256",)
_MAX_SAD_BYTES = 16 * 1024

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SadHeader:
    device_id: str


@dataclass(frozen=True, slots=True)
class SadClaims:
    issuer: str
    audience: str
    request_id: str
    credential_id: str
    hash_algorithm: str
    hashes: tuple[str, ...]
    num_signatures: int
    nonce: str = field(repr=False)
    display_text_hash: str
    verification_code: str | None = field(repr=False)
    decision: str
    issued_at: int
    expires_at: int


def read_header(token: str) -> SadHeader:
    """Read the untrusted header to find which device key to verify with."""
    if len(token) > _MAX_SAD_BYTES or token.count(".") != 2:
        raise MalformedSad("the SAD is not a compact JWS")
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeError) as e:
        raise MalformedSad("the SAD is not a compact JWS") from e
    if header.get("alg") not in _ALGORITHMS:
        raise MalformedSad("the SAD must be signed with ES256")
    if header.get("typ") != SAD_TYPE:
        raise MalformedSad(f"the SAD header must have typ {SAD_TYPE}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise MalformedSad("the SAD header has no kid")
    return SadHeader(device_id=kid)


def verify_sad(token: str, key: ECKey) -> SadClaims:
    """Verify the signature with the device key and parse the claims."""
    try:
        verified = jws.deserialize_compact(token, key, algorithms=_ALGORITHMS)
    except JoseError as e:
        raise BadSadSignature("the SAD signature does not verify") from e
    except ValueError as e:
        raise MalformedSad("the SAD is not a compact JWS") from e
    try:
        payload = json.loads(verified.payload)
    except (ValueError, UnicodeError) as e:
        raise MalformedSad("the SAD payload is not JSON") from e
    if not isinstance(payload, dict):
        raise MalformedSad("the SAD payload is not a JSON object")
    return _claims(payload)


def _claims(payload: dict[str, Any]) -> SadClaims:
    hashes = _required(payload, "hashes", list)
    if not all(isinstance(h, str) for h in hashes):
        raise MalformedSad("claim hashes must be a list of strings")
    vc = payload.get("vc")
    if vc is not None and not isinstance(vc, str):
        raise MalformedSad("claim vc must be a string")
    return SadClaims(
        issuer=_required(payload, "iss", str),
        audience=_required(payload, "aud", str),
        request_id=_required(payload, "rid", str),
        credential_id=_required(payload, "cid", str),
        hash_algorithm=_required(payload, "halg", str),
        hashes=tuple(hashes),
        num_signatures=_required(payload, "numSignatures", int),
        nonce=_required(payload, "nonce", str),
        display_text_hash=_required(payload, "dth", str),
        verification_code=vc,
        decision=_required(payload, "decision", str),
        issued_at=_required(payload, "iat", int),
        expires_at=_required(payload, "exp", int),
    )


def _required(payload: dict[str, Any], name: str, kind: type[_T]) -> _T:
    value = payload.get(name)
    # bool is an int subclass; a JSON true is never a count or a time.
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise MalformedSad(f"claim {name} is missing or not a {kind.__name__}")
    return value
