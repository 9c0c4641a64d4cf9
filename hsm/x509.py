"""PKCS#10 requests and X.509 v3 certificates signed by keys in the HSM.

Implements the parts of RFC 2986 (PKCS#10 v1.7 CertificationRequest) and
RFC 5280 (X.509 v3 certificate profile) that a development CA needs:
to-be-signed structures are assembled with asn1crypto, their digest is signed
in the token, and the results are loaded and checked with ``cryptography``.
Signature algorithm identifiers follow RFC 5758 (ECDSA, parameters absent)
and RFC 4055 (RSA PKCS#1 v1.5, parameters NULL).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import secrets

from asn1crypto import algos, core, keys
from asn1crypto import csr as asn1_csr
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from .algorithms import HashAlg, KeyType, SignMechanism, signature_algorithm_oid
from .errors import HsmError, InvalidCsr
from .model import KeyHandle
from .token import Hsm

__all__ = ["InvalidCsr", "build_csr", "create_ca_certificate", "issue_certificate"]

logger = logging.getLogger(__name__)

# Certificates start a little in the past so that a relying party whose clock
# runs behind does not see them as not yet valid.
_BACKDATE = datetime.timedelta(minutes=5)
# RFC 5280 section 4.1.2.5: UTCTime up to 2049, GeneralizedTime from 2050.
_GENERALIZED_TIME_FROM = datetime.datetime(2050, 1, 1, tzinfo=datetime.UTC)
_SERIAL_BITS = 159  # positive and at most 20 octets (RFC 5280 section 4.1.2.2)


def _scheme(key_type: KeyType) -> tuple[SignMechanism, HashAlg]:
    if key_type is KeyType.EC_P256:
        return SignMechanism.ECDSA, HashAlg.SHA256
    if key_type is KeyType.EC_P384:
        return SignMechanism.ECDSA, HashAlg.SHA384
    return SignMechanism.RSA_PKCS1V15, HashAlg.SHA256


def _algorithm_identifier(key_type: KeyType) -> algos.SignedDigestAlgorithm:
    mechanism, hash_alg = _scheme(key_type)
    oid = signature_algorithm_oid(mechanism, hash_alg)
    if mechanism is SignMechanism.ECDSA:
        return algos.SignedDigestAlgorithm({"algorithm": oid})
    return algos.SignedDigestAlgorithm({"algorithm": oid, "parameters": core.Null()})


async def _sign(hsm: Hsm, key: KeyHandle, tbs_der: bytes) -> bytes:
    mechanism, hash_alg = _scheme(key.key_type)
    digest = hashlib.new(hash_alg.value, tbs_der).digest()
    return await hsm.sign_digest(
        key.key_id, digest, mechanism=mechanism, hash_alg=hash_alg
    )


def _name(name: x509.Name) -> asn1_x509.Name:
    return asn1_x509.Name.load(name.public_bytes())


def _time(moment: datetime.datetime) -> asn1_x509.Time:
    if moment >= _GENERALIZED_TIME_FROM:
        return asn1_x509.Time(name="general_time", value=moment)
    return asn1_x509.Time(name="utc_time", value=moment)


def _key_identifier(public_key_info: keys.PublicKeyInfo) -> bytes:
    # RFC 5280 section 4.2.1.2, method (1): SHA-1 of the subjectPublicKey
    # BIT STRING value. An identifier, not a security function.
    return hashlib.sha1(
        public_key_info["public_key"].contents[1:], usedforsecurity=False
    ).digest()


def _extension(extn_id: str, critical: bool, value: object) -> dict[str, object]:
    return {"extn_id": extn_id, "critical": critical, "extn_value": value}


async def build_csr(hsm: Hsm, key: KeyHandle, *, subject: x509.Name) -> bytes:
    """DER PKCS#10 request for ``key``, signed by it in the HSM (RFC 2986)."""
    info = asn1_csr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": _name(subject),
            "subject_pk_info": keys.PublicKeyInfo.load(key.public_key_der),
            "attributes": [],
        }
    )
    signature = await _sign(hsm, key, info.dump())
    request = asn1_csr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": _algorithm_identifier(key.key_type),
            "signature": signature,
        }
    )
    der: bytes = request.dump()
    return der


async def _certificate(
    hsm: Hsm,
    signer: KeyHandle,
    *,
    serial: int,
    issuer: asn1_x509.Name,
    subject: asn1_x509.Name,
    public_key_info: keys.PublicKeyInfo,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    extensions: list[dict[str, object]],
) -> bytes:
    algorithm = _algorithm_identifier(signer.key_type)
    tbs = asn1_x509.TbsCertificate(
        {
            "version": "v3",
            "serial_number": serial,
            "signature": algorithm,
            "issuer": issuer,
            "validity": {
                "not_before": _time(not_before),
                "not_after": _time(not_after),
            },
            "subject": subject,
            "subject_public_key_info": public_key_info,
            "extensions": extensions,
        }
    )
    signature = await _sign(hsm, signer, tbs.dump())
    certificate = asn1_x509.Certificate(
        {
            "tbs_certificate": tbs,
            "signature_algorithm": algorithm,
            "signature_value": signature,
        }
    )
    der: bytes = certificate.dump()
    return der


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _random_serial() -> int:
    return secrets.randbits(_SERIAL_BITS) | 1  # never zero


async def create_ca_certificate(
    hsm: Hsm, key: KeyHandle, *, subject: x509.Name, validity_days: int = 3650
) -> bytes:
    """Self-signed DER CA certificate for ``key`` (RFC 5280 section 4.2.1.9)."""
    if validity_days < 1:
        raise ValueError("validity_days must be at least 1")
    public_key_info = keys.PublicKeyInfo.load(key.public_key_der)
    key_id = _key_identifier(public_key_info)
    name = _name(subject)
    not_before = _now() - _BACKDATE
    der = await _certificate(
        hsm,
        key,
        serial=_random_serial(),
        issuer=name,
        subject=name,
        public_key_info=public_key_info,
        not_before=not_before,
        not_after=not_before + datetime.timedelta(days=validity_days),
        extensions=[
            _extension("basic_constraints", True, {"ca": True}),
            _extension("key_usage", True, {"key_cert_sign", "crl_sign"}),
            _extension("key_identifier", False, key_id),
            _extension("authority_key_identifier", False, {"key_identifier": key_id}),
        ],
    )
    logger.debug("created CA certificate for key %s", key.key_id)
    return der


def _load_csr(csr_der: bytes) -> x509.CertificateSigningRequest:
    # Each step has its own refusal: parse, then signature (proof that the
    # requester holds the private key, RFC 2986 section 3).
    try:
        request = x509.load_der_x509_csr(csr_der)
    except ValueError as e:
        raise InvalidCsr(f"not a DER PKCS#10 request: {e}") from e
    try:
        valid = request.is_signature_valid
    except (UnsupportedAlgorithm, ValueError) as e:
        raise InvalidCsr(f"request signature cannot be checked: {e}") from e
    if not valid:
        raise InvalidCsr("request signature does not verify")
    return request


async def issue_certificate(
    hsm: Hsm,
    *,
    ca_key: KeyHandle,
    ca_certificate_der: bytes,
    csr_der: bytes,
    validity_days: int = 825,
    serial: int | None = None,
) -> bytes:
    """End-entity certificate for the key and subject of a verified request.

    The certificate is for signing (digitalSignature, nonRepudiation); its
    validity never runs past the CA's.
    """
    if validity_days < 1:
        raise ValueError("validity_days must be at least 1")
    if serial is not None and not 0 < serial < 2**159:
        raise ValueError("serial must be positive and fit in 20 octets")
    request = _load_csr(csr_der)

    ca = x509.load_der_x509_certificate(ca_certificate_der)
    ca_public_der = ca.public_key().public_bytes(
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    if ca_public_der != ca_key.public_key_der:
        raise HsmError("ca_key is not the key of ca_certificate_der")

    asn1_request = asn1_csr.CertificationRequest.load(csr_der)
    info = asn1_request["certification_request_info"]
    public_key_info = info["subject_pk_info"]
    asn1_ca = asn1_x509.Certificate.load(ca_certificate_der)
    ca_key_id = asn1_ca.key_identifier or _key_identifier(asn1_ca.public_key)

    not_before = _now() - _BACKDATE
    not_after = min(
        not_before + datetime.timedelta(days=validity_days),
        ca.not_valid_after_utc,
    )
    der = await _certificate(
        hsm,
        ca_key,
        serial=_random_serial() if serial is None else serial,
        issuer=asn1_ca.subject,
        subject=info["subject"],
        public_key_info=public_key_info,
        not_before=not_before,
        not_after=not_after,
        extensions=[
            _extension("basic_constraints", True, {"ca": False}),
            _extension("key_usage", True, {"digital_signature", "non_repudiation"}),
            _extension("key_identifier", False, _key_identifier(public_key_info)),
            _extension(
                "authority_key_identifier", False, {"key_identifier": ca_key_id}
            ),
        ],
    )
    logger.debug(
        "issued certificate for %s under CA key %s",
        request.subject.rfc4514_string(),
        ca_key.key_id,
    )
    return der
