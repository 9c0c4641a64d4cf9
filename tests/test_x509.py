"""PKCS#10 requests and certificates signed by keys in SoftHSM2 (RFC 2986,
RFC 5280), checked with ``cryptography``."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from hsm import Hsm, HsmError, InvalidCsr, KeyHandle, KeyType
from hsm.x509 import build_csr, create_ca_certificate, issue_certificate

CA_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "EE"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sigil Test"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Sigil Test CA"),
    ]
)
SIGNER_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "EE"),
        x509.NameAttribute(NameOID.GIVEN_NAME, "Mari"),
        x509.NameAttribute(NameOID.SURNAME, "Maasikas"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, "PNOEE-48010010101"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Mari Maasikas"),
    ]
)


def spki(key: x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
async def ca(hsm: Hsm) -> AsyncIterator[tuple[KeyHandle, x509.Certificate]]:
    key = await hsm.generate_key(KeyType.EC_P256, label="test ca")
    der = await create_ca_certificate(hsm, key, subject=CA_NAME)
    yield key, x509.load_der_x509_certificate(der)
    await hsm.destroy_key(key.key_id)


@pytest.mark.parametrize(
    ("key_type", "hash_name"),
    [
        (KeyType.EC_P256, "sha256"),
        (KeyType.EC_P384, "sha384"),
        (KeyType.RSA_2048, "sha256"),
    ],
)
async def test_csr_is_signed_by_the_hsm_key_and_names_the_subject(
    hsm: Hsm, key_type: KeyType, hash_name: str
) -> None:
    key = await hsm.generate_key(key_type, label="csr")

    request = x509.load_der_x509_csr(await build_csr(hsm, key, subject=SIGNER_NAME))

    assert request.is_signature_valid
    assert request.subject == SIGNER_NAME
    assert spki(request) == key.public_key_der
    assert request.signature_hash_algorithm is not None
    assert request.signature_hash_algorithm.name == hash_name
    await hsm.destroy_key(key.key_id)


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.RSA_2048])
async def test_ca_certificate_is_self_signed_with_ca_extensions(
    hsm: Hsm, key_type: KeyType
) -> None:
    key = await hsm.generate_key(key_type, label="ca")

    ca = x509.load_der_x509_certificate(
        await create_ca_certificate(hsm, key, subject=CA_NAME, validity_days=30)
    )

    ca.verify_directly_issued_by(ca)
    assert ca.subject == ca.issuer == CA_NAME
    assert ca.version is x509.Version.v3
    assert spki(ca) == key.public_key_der
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert datetime.timedelta(days=30) <= lifetime < datetime.timedelta(days=31)
    await hsm.destroy_key(key.key_id)


@pytest.mark.parametrize("leaf_type", [KeyType.EC_P256, KeyType.RSA_2048])
async def test_leaf_issued_from_csr_verifies_against_the_ca(
    hsm: Hsm, ca: tuple[KeyHandle, x509.Certificate], leaf_type: KeyType
) -> None:
    ca_key, ca_cert = ca
    signer = await hsm.generate_key(leaf_type, label="signer")
    csr_der = await build_csr(hsm, signer, subject=SIGNER_NAME)

    leaf = x509.load_der_x509_certificate(
        await issue_certificate(
            hsm,
            ca_key=ca_key,
            ca_certificate_der=ca_cert.public_bytes(serialization.Encoding.DER),
            csr_der=csr_der,
        )
    )

    leaf.verify_directly_issued_by(ca_cert)
    assert leaf.subject == SIGNER_NAME
    assert leaf.issuer == CA_NAME
    assert spki(leaf) == signer.public_key_der
    assert 0 < leaf.serial_number < 2**159
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)

    basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert not basic.value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.content_commitment  # nonRepudiation
    assert not usage.value.key_cert_sign
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.value.key_identifier == ca_ski.value.digest
    assert leaf.not_valid_after_utc <= ca_cert.not_valid_after_utc
    await hsm.destroy_key(signer.key_id)


async def test_leaf_passes_rfc5280_path_validation(
    hsm: Hsm, ca: tuple[KeyHandle, x509.Certificate]
) -> None:
    ca_key, ca_cert = ca
    signer = await hsm.generate_key(KeyType.EC_P256, label="signer")
    leaf = x509.load_der_x509_certificate(
        await issue_certificate(
            hsm,
            ca_key=ca_key,
            ca_certificate_der=ca_cert.public_bytes(serialization.Encoding.DER),
            csr_der=await build_csr(hsm, signer, subject=SIGNER_NAME),
        )
    )
    # The web PKI defaults want a SAN and an EKU in the leaf; a signing
    # certificate for a natural person has neither. Keep the CA defaults and
    # ask of the leaf only what this profile puts there.
    ee_policy = (
        ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, Criticality.CRITICAL, None)
        .require_present(x509.KeyUsage, Criticality.CRITICAL, None)
        .require_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
    )
    verifier = (
        PolicyBuilder()
        .store(Store([ca_cert]))
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
        )
        .build_client_verifier()
    )

    verified = verifier.verify(leaf, [])

    assert verified.chain == [leaf, ca_cert]
    # The same leaf does not chain to another CA with the same name.
    other_key = await hsm.generate_key(KeyType.EC_P256, label="other ca")
    other_ca = x509.load_der_x509_certificate(
        await create_ca_certificate(hsm, other_key, subject=CA_NAME)
    )
    other_verifier = (
        PolicyBuilder()
        .store(Store([other_ca]))
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
        )
        .build_client_verifier()
    )
    with pytest.raises(VerificationError):
        other_verifier.verify(leaf, [])
    await hsm.destroy_key(signer.key_id)
    await hsm.destroy_key(other_key.key_id)


async def test_explicit_serial_is_used(
    hsm: Hsm, ca: tuple[KeyHandle, x509.Certificate]
) -> None:
    ca_key, ca_cert = ca
    signer = await hsm.generate_key(KeyType.EC_P256, label="signer")
    leaf = x509.load_der_x509_certificate(
        await issue_certificate(
            hsm,
            ca_key=ca_key,
            ca_certificate_der=ca_cert.public_bytes(serialization.Encoding.DER),
            csr_der=await build_csr(hsm, signer, subject=SIGNER_NAME),
            serial=0x5EED,
            validity_days=10,
        )
    )
    assert leaf.serial_number == 0x5EED
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert datetime.timedelta(days=10) <= lifetime < datetime.timedelta(days=11)
    await hsm.destroy_key(signer.key_id)


async def test_validity_is_capped_at_the_cas(hsm: Hsm) -> None:
    ca_key = await hsm.generate_key(KeyType.EC_P256, label="short ca")
    ca_der = await create_ca_certificate(hsm, ca_key, subject=CA_NAME, validity_days=2)
    signer = await hsm.generate_key(KeyType.EC_P256, label="signer")
    leaf = x509.load_der_x509_certificate(
        await issue_certificate(
            hsm,
            ca_key=ca_key,
            ca_certificate_der=ca_der,
            csr_der=await build_csr(hsm, signer, subject=SIGNER_NAME),
        )
    )
    ca_cert = x509.load_der_x509_certificate(ca_der)
    assert leaf.not_valid_after_utc == ca_cert.not_valid_after_utc
    await hsm.destroy_key(ca_key.key_id)
    await hsm.destroy_key(signer.key_id)


def _tamper_subject(csr_der: bytes) -> bytes:
    # Change one letter of the signer's name: the DER stays well formed but
    # the signature no longer covers it.
    index = csr_der.index(b"Maasikas")
    return csr_der[:index] + b"N" + csr_der[index + 1 :]


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_tamper_subject, "does not verify"),
        (lambda der: der[:-1] + bytes([der[-1] ^ 0x01]), "does not verify"),
        (lambda der: der[: len(der) // 2], "not a DER PKCS#10"),
        (lambda der: b"", "not a DER PKCS#10"),
    ],
    ids=["subject", "signature", "truncated", "empty"],
)
async def test_tampered_csr_is_refused_with_invalid_csr(
    hsm: Hsm,
    ca: tuple[KeyHandle, x509.Certificate],
    tamper: Callable[[bytes], bytes],
    message: str,
) -> None:
    ca_key, ca_cert = ca
    signer = await hsm.generate_key(KeyType.EC_P256, label="signer")
    csr_der = await build_csr(hsm, signer, subject=SIGNER_NAME)

    with pytest.raises(InvalidCsr, match=message):
        await issue_certificate(
            hsm,
            ca_key=ca_key,
            ca_certificate_der=ca_cert.public_bytes(serialization.Encoding.DER),
            csr_der=tamper(csr_der),
        )
    await hsm.destroy_key(signer.key_id)


async def test_csr_made_elsewhere_is_accepted(
    hsm: Hsm, ca: tuple[KeyHandle, x509.Certificate]
) -> None:
    ca_key, ca_cert = ca
    software_key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(SIGNER_NAME)
        .sign(software_key, hashes.SHA256())
    )
    leaf = x509.load_der_x509_certificate(
        await issue_certificate(
            hsm,
            ca_key=ca_key,
            ca_certificate_der=ca_cert.public_bytes(serialization.Encoding.DER),
            csr_der=request.public_bytes(serialization.Encoding.DER),
        )
    )
    leaf.verify_directly_issued_by(ca_cert)
    assert spki(leaf) == spki(request)


async def test_ca_key_must_match_the_ca_certificate(
    hsm: Hsm, ca: tuple[KeyHandle, x509.Certificate]
) -> None:
    _, ca_cert = ca
    stranger = await hsm.generate_key(KeyType.EC_P256, label="not the ca")
    with pytest.raises(HsmError, match="ca_key"):
        await issue_certificate(
            hsm,
            ca_key=stranger,
            ca_certificate_der=ca_cert.public_bytes(serialization.Encoding.DER),
            csr_der=await build_csr(hsm, stranger, subject=SIGNER_NAME),
        )
    await hsm.destroy_key(stranger.key_id)
