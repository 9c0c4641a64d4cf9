"""The phone's device key and the compact JWS it makes.

Implements, as docs/api.md profiles them: RFC 7515 compact JWS with ES256
(RFC 7518 section 3.4), the RFC 7638 JWK thumbprint that names a device, the
Device JWS that authenticates every device call (AUTH-2) and the signing of
Signature Activation Data (SAD-1).
"""

from __future__ import annotations

import enum
import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws
from joserfc.jwk import ECKey

from ._b64 import b64url_encode

__all__ = [
    "DEVICE_CALL_TYP",
    "DROP",
    "SAD_TYP",
    "DeviceKey",
    "DropType",
    "apply_overrides",
    "body_hash",
]

DEVICE_CALL_TYP: Final = "dev-call+jwt"
SAD_TYP: Final = "sad+jwt"


class DropType(enum.Enum):
    """The type of DROP, for annotations."""

    DROP = "DROP"

    def __repr__(self) -> str:
        return "DROP"


DROP: Final = DropType.DROP
"""Maps a claim to removal in an ``overrides`` mapping."""


def apply_overrides(
    claims: Mapping[str, Any], overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Return claims with overrides inserted or replaced, DROP ones removed."""
    result = dict(claims)
    for name, value in (overrides or {}).items():
        if value is DROP:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def body_hash(body: bytes) -> str:
    """The ``bh`` claim: base64url SHA-256 of the exact body bytes."""
    return b64url_encode(hashlib.sha256(body).digest())


class DeviceKey:
    """A P-256 device key, named by its RFC 7638 thumbprint."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | None = None) -> None:
        if private_key is None:
            private_key = ec.generate_private_key(ec.SECP256R1())
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError("a device key must be on P-256 for ES256")
        self._private_key = private_key
        self._jwk = ECKey.import_key(private_key)
        self.device_id: Final = self._jwk.thumbprint()

    def __repr__(self) -> str:
        return f"DeviceKey(device_id={self.device_id!r})"

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return self._private_key

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._private_key.public_key()

    def public_jwk(self) -> dict[str, str]:
        """The public JWK with only the members RFC 7638 hashes."""
        full = self._jwk.as_dict(private=False)
        return {name: str(full[name]) for name in ("kty", "crv", "x", "y")}

    def private_pem(self) -> bytes:
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, pem: bytes) -> DeviceKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the PEM does not hold an EC private key")
        return cls(key)

    def sign(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
        """Compact JWS over the JSON claims; the header must name ES256."""
        payload = json.dumps(dict(claims), separators=(",", ":")).encode("utf-8")
        return jws.serialize_compact(
            dict(header), payload, self._jwk, algorithms=["ES256"]
        )

    def device_call_token(
        self,
        method: str,
        htu: str,
        body: bytes,
        *,
        embed_jwk: bool = False,
        iat: int | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> str:
        """The Device JWS for one call, bound to its method, path and body.

        ``embed_jwk`` puts the public key in the header instead of ``kid``:
        the enrolment call, where the server does not know the key yet.
        """
        header: dict[str, Any] = {"alg": "ES256", "typ": DEVICE_CALL_TYP}
        if embed_jwk:
            header["jwk"] = self.public_jwk()
        else:
            header["kid"] = self.device_id
        claims = {
            "htm": method.upper(),
            "htu": htu,
            "iat": int(time.time()) if iat is None else iat,
            "jti": secrets.token_urlsafe(16),
            "bh": body_hash(body),
        }
        return self.sign(header, apply_overrides(claims, overrides))
