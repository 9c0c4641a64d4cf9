"""Key types, hash algorithms and signature mechanisms the HSM layer offers.

Object identifiers follow RFC 5758 (ecdsa-with-SHA*), RFC 8017 appendix A
(sha*WithRSAEncryption, RSASSA-PSS) and NIST CSOR (SHA-2 digests).
"""

from __future__ import annotations

import enum

from asn1crypto import algos, core

__all__ = [
    "HashAlg",
    "KeyType",
    "SignMechanism",
    "digest_info",
    "signature_algorithm_oid",
]


class KeyType(enum.StrEnum):
    EC_P256 = "EC-P256"
    EC_P384 = "EC-P384"
    RSA_2048 = "RSA-2048"
    RSA_3072 = "RSA-3072"

    @property
    def is_ec(self) -> bool:
        return self in (KeyType.EC_P256, KeyType.EC_P384)

    @property
    def is_rsa(self) -> bool:
        return not self.is_ec

    @property
    def bits(self) -> int:
        """Curve size or modulus length in bits."""
        return _KEY_BITS[self]

    @property
    def curve_name(self) -> str:
        """Named curve (asn1crypto spelling); ValueError for RSA key types."""
        if not self.is_ec:
            raise ValueError(f"{self.value} is not an elliptic-curve key type")
        return _CURVE_NAMES[self]


_KEY_BITS = {
    KeyType.EC_P256: 256,
    KeyType.EC_P384: 384,
    KeyType.RSA_2048: 2048,
    KeyType.RSA_3072: 3072,
}
_CURVE_NAMES = {KeyType.EC_P256: "secp256r1", KeyType.EC_P384: "secp384r1"}


class HashAlg(enum.StrEnum):
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"

    @property
    def digest_size(self) -> int:
        return _DIGEST_SIZES[self]

    @property
    def oid(self) -> str:
        """Dotted object identifier of the digest algorithm (NIST CSOR)."""
        return _HASH_OIDS[self]

    @classmethod
    def from_name(cls, text: str) -> HashAlg:
        """Accept ``SHA-256``, ``sha256``, ``SHA256`` or the dotted OID."""
        cleaned = text.strip()
        for alg, oid in _HASH_OIDS.items():
            if cleaned == oid:
                return alg
        try:
            return cls(cleaned.lower().replace("-", ""))
        except ValueError:
            raise ValueError(
                f"unsupported hash algorithm {text[:40]!r}; "
                "expected SHA-256, SHA-384 or SHA-512"
            ) from None


_DIGEST_SIZES = {HashAlg.SHA256: 32, HashAlg.SHA384: 48, HashAlg.SHA512: 64}
_HASH_OIDS = {
    HashAlg.SHA256: "2.16.840.1.101.3.4.2.1",
    HashAlg.SHA384: "2.16.840.1.101.3.4.2.2",
    HashAlg.SHA512: "2.16.840.1.101.3.4.2.3",
}


class SignMechanism(enum.StrEnum):
    ECDSA = "ecdsa"
    RSA_PKCS1V15 = "rsa-pkcs1v15"
    RSA_PSS = "rsa-pss"

    def fits(self, key_type: KeyType) -> bool:
        """True when a key of ``key_type`` can sign with this mechanism."""
        if self is SignMechanism.ECDSA:
            return key_type.is_ec
        return key_type.is_rsa


_ECDSA_OIDS = {
    HashAlg.SHA256: "1.2.840.10045.4.3.2",
    HashAlg.SHA384: "1.2.840.10045.4.3.3",
    HashAlg.SHA512: "1.2.840.10045.4.3.4",
}
_RSA_PKCS1V15_OIDS = {
    HashAlg.SHA256: "1.2.840.113549.1.1.11",
    HashAlg.SHA384: "1.2.840.113549.1.1.12",
    HashAlg.SHA512: "1.2.840.113549.1.1.13",
}
_RSASSA_PSS_OID = "1.2.840.113549.1.1.10"


def signature_algorithm_oid(mechanism: SignMechanism, hash_alg: HashAlg) -> str:
    """The AlgorithmIdentifier OID that names ``mechanism`` over ``hash_alg``.

    RSASSA-PSS has one OID for every hash; its parameters carry the hash.
    """
    if mechanism is SignMechanism.ECDSA:
        return _ECDSA_OIDS[hash_alg]
    if mechanism is SignMechanism.RSA_PKCS1V15:
        return _RSA_PKCS1V15_OIDS[hash_alg]
    return _RSASSA_PSS_OID


def _digest_info_prefix(hash_alg: HashAlg) -> bytes:
    # The DER of DigestInfo (RFC 8017 section 9.2, note 1: parameters are an
    # explicit NULL) ends with the digest octets; everything before them is
    # fixed for a given hash.
    encoded: bytes = algos.DigestInfo(
        {
            "digest_algorithm": {
                "algorithm": hash_alg.value,
                "parameters": core.Null(),
            },
            "digest": bytes(hash_alg.digest_size),
        }
    ).dump()
    return encoded[: -hash_alg.digest_size]


_DIGEST_INFO_PREFIXES = {alg: _digest_info_prefix(alg) for alg in HashAlg}


def digest_info(hash_alg: HashAlg, digest: bytes) -> bytes:
    """DER DigestInfo around ``digest``, the input of EMSA-PKCS1-v1_5."""
    if len(digest) != hash_alg.digest_size:
        raise ValueError(
            f"{hash_alg.value} digest must be {hash_alg.digest_size} bytes, "
            f"got {len(digest)}"
        )
    return _DIGEST_INFO_PREFIXES[hash_alg] + digest
