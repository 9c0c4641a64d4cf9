"""What the CSC API says about credentials and signature algorithms.

Cloud Signature Consortium API v2 (and v1.0.4 for older clients): object
identifiers of the key and signature algorithms a credential offers, the
parsing of ``signAlgo``/``signAlgoParams`` into an HSM mechanism, and the
``credentials/info`` answer in either version's shape.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asn1crypto import algos
from cryptography import x509

from hsm import HashAlg, KeyType, SignMechanism
from store import Credential, User

__all__ = [
    "CscError",
    "SignAlgorithm",
    "credential_info",
    "key_algorithms",
    "sign_algorithm",
]


class CscError(Exception):
    """A refusal in the CSC API's own words: HTTP status, ``error`` and
    ``error_description`` (CSC API v2, 10.1)."""

    def __init__(self, description: str, *, error: str = "invalid_request") -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = 400


_ECDSA = {
    "1.2.840.10045.4.3.2": HashAlg.SHA256,
    "1.2.840.10045.4.3.3": HashAlg.SHA384,
    "1.2.840.10045.4.3.4": HashAlg.SHA512,
}
_RSA_PKCS1 = {
    "1.2.840.113549.1.1.11": HashAlg.SHA256,
    "1.2.840.113549.1.1.12": HashAlg.SHA384,
    "1.2.840.113549.1.1.13": HashAlg.SHA512,
}
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
RSASSA_PSS = "1.2.840.113549.1.1.10"
_CURVES = {KeyType.EC_P256: "1.2.840.10045.3.1.7", KeyType.EC_P384: "1.3.132.0.34"}
_MGF1 = "1.2.840.113549.1.1.8"
_PSS_HASHES = {alg.oid: alg for alg in HashAlg}


def key_algorithms(key_type: KeyType) -> list[str]:
    """The ``signAlgo`` values a key of ``key_type`` signs with."""
    if key_type.is_ec:
        return list(_ECDSA)
    return [*_RSA_PKCS1, RSA_ENCRYPTION, RSASSA_PSS]


@dataclass(frozen=True, slots=True)
class SignAlgorithm:
    """A parsed ``signAlgo``: the HSM mechanism and the digest it signs."""

    mechanism: SignMechanism
    hash_alg: HashAlg
    pss_salt_length: int | None = None


def sign_algorithm(
    key_type: KeyType,
    sign_algo: str,
    params: str | None,
    hash_oid: str | None,
) -> SignAlgorithm:
    """Parse ``signAlgo`` (+ ``signAlgoParams``, ``hashAlgorithmOID``) for a
    key; a ``CscError`` names the parameter that is wrong."""
    if sign_algo not in key_algorithms(key_type):
        raise CscError("Invalid parameter signAlgo")
    hinted = _hash_from_oid(hash_oid) if hash_oid is not None else None

    if sign_algo == RSASSA_PSS:
        if params is None:
            raise CscError("Missing (or invalid type) string parameter signAlgoParams")
        hash_alg, salt = _pss_params(params, key_type)
        if hinted is not None and hinted is not hash_alg:
            raise CscError("Invalid parameter hashAlgorithmOID")
        return SignAlgorithm(SignMechanism.RSA_PSS, hash_alg, salt)
    if params is not None:
        raise CscError("Invalid parameter signAlgoParams")

    if sign_algo == RSA_ENCRYPTION:
        # The digest is not implied: hashAlgorithmOID names it (CSC v2, 11.9).
        if hinted is None:
            raise CscError(
                "Missing (or invalid type) string parameter hashAlgorithmOID"
            )
        return SignAlgorithm(SignMechanism.RSA_PKCS1V15, hinted)

    implied = _ECDSA.get(sign_algo) or _RSA_PKCS1[sign_algo]
    if hinted is not None and hinted is not implied:
        raise CscError("Invalid parameter hashAlgorithmOID")
    mechanism = (
        SignMechanism.ECDSA if sign_algo in _ECDSA else SignMechanism.RSA_PKCS1V15
    )
    return SignAlgorithm(mechanism, implied)


def _hash_from_oid(oid: str) -> HashAlg:
    for alg in HashAlg:
        if alg.oid == oid:
            return alg
    raise CscError("Invalid parameter hashAlgorithmOID")


def _pss_params(params: str, key_type: KeyType) -> tuple[HashAlg, int]:
    """Hash and salt length from base64 DER RSASSA-PSS-params (RFC 4055).

    Only strict DER: what asn1crypto would encode again byte for byte (no
    trailing bytes, no indefinite lengths, minimal integers, defaults
    left out), and hash identifiers whose parameters are absent or NULL.
    Anything else is refused, so that no two readers see different params.
    """
    try:
        raw = base64.b64decode(params, validate=True)
        parsed = algos.RSASSAPSSParams.load(raw, strict=True)
        if parsed.dump(force=True) != raw:
            raise ValueError("not DER")
        hash_id = parsed["hash_algorithm"]
        mgf = parsed["mask_gen_algorithm"]
        if mgf["algorithm"].dotted != _MGF1:
            raise ValueError("not MGF1")
        mgf_hash_id = mgf["parameters"]
        if not (_null_or_absent(hash_id) and _null_or_absent(mgf_hash_id)):
            raise ValueError("hash parameters other than NULL")
        hash_oid = hash_id["algorithm"].dotted
        mgf_hash = mgf_hash_id["algorithm"].dotted
        salt = int(parsed["salt_length"].native)
        trailer = parsed["trailer_field"].native
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        binascii.Error,
    ) as e:
        # AttributeError: asn1crypto fails so on some unknown MGF identifiers.
        raise CscError("Invalid parameter signAlgoParams") from e
    # One hash for the message and MGF1, as PKCS#11's CKM_RSA_PKCS_PSS takes it.
    hash_alg = _PSS_HASHES.get(hash_oid)
    if hash_alg is None or mgf_hash != hash_oid or trailer != "trailer_field_bc":
        raise CscError("Invalid parameter signAlgoParams")
    em_len = (key_type.bits - 1 + 7) // 8
    if not 0 <= salt <= em_len - hash_alg.digest_size - 2:
        raise CscError("Invalid parameter signAlgoParams")
    return hash_alg, salt


def _null_or_absent(identifier: algos.DigestAlgorithm) -> bool:
    """An AlgorithmIdentifier of a hash: its parameters absent or NULL."""
    return identifier["parameters"].dump() in (b"", b"\x05\x00")


def _der_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


def credential_info(
    credential: Credential,
    user: User,
    *,
    version: int,
    certificates: str,
    cert_info: bool,
    auth_info: bool,
    multisign: int,
    now: datetime,
) -> dict[str, Any]:
    """The ``credentials/info`` answer for CSC API ``version`` 1 or 2."""
    key_type = KeyType(credential.key_algorithm)
    certificate = x509.load_der_x509_certificate(credential.certificate_der)
    valid = certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc
    key: dict[str, Any] = {
        "status": "enabled" if credential.status == "active" else "disabled",
        "algo": key_algorithms(key_type),
        "len": key_type.bits,
    }
    if key_type.is_ec:
        key["curve"] = _CURVES[key_type]

    cert: dict[str, Any] = {"status": "valid" if valid else "expired"}
    chain = [base64.b64encode(der).decode("ascii") for der in credential.chain_der]
    if certificates == "single":
        cert["certificates"] = chain[:1]
    elif certificates == "chain":
        cert["certificates"] = chain
    if cert_info:
        cert.update(
            issuerDN=certificate.issuer.rfc4514_string(),
            subjectDN=certificate.subject.rfc4514_string(),
            serialNumber=format(certificate.serial_number, "x"),
            validFrom=_der_time(certificate.not_valid_before_utc),
            validTo=_der_time(certificate.not_valid_after_utc),
        )

    info: dict[str, Any] = {
        "description": f"Signing key of {user.display_name}, approved on the phone",
        "key": key,
        "cert": cert,
        # Every hash is shown to and approved by the signer (SCAL 2).
        "SCAL": "2",
        "multisign": multisign,
        "lang": "en-US",
    }
    factor = user.second_factor
    if version == 1:
        info["authMode"] = "implicit" if factor == "none" else "explicit"
        if auth_info or factor != "none":
            info["PIN"] = {"presence": "true" if factor == "pin" else "false"}
            info["OTP"] = {"presence": "true" if factor == "totp" else "false"}
            if factor == "pin":
                info["PIN"].update(format="N", label="PIN")
            if factor == "totp":
                info["OTP"].update(
                    type="offline", format="N", label="OTP", ID="totp", provider="totp"
                )
        return info

    auth: dict[str, Any] = {"mode": "explicit"}
    if auth_info:
        objects = []
        if factor == "pin":
            objects.append(
                {
                    "type": "Password",
                    "id": "PIN",
                    "format": "N",
                    "label": "PIN",
                    "description": "The signer's PIN",
                }
            )
        if factor == "totp":
            objects.append(
                {
                    "type": "Password",
                    "id": "OTP",
                    "format": "N",
                    "generator": "totp",
                    "label": "OTP",
                    "description": "A one-time code from the signer's authenticator",
                }
            )
        if objects:
            auth["expression"] = " AND ".join(o["id"] for o in objects)
        auth["objects"] = objects
    info["auth"] = auth
    return info
