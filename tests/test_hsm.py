"""The HSM layer against a real SoftHSM2 token (HSM-1, HSM-2, HSM-3)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import load_der_public_key
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e

from hsm import (
    HashAlg,
    Hsm,
    HsmConfig,
    KeyHandle,
    KeyNotFound,
    KeyType,
    MechanismUnsupported,
    PinIncorrect,
    SessionUnavailable,
    SignMechanism,
    TokenNotFound,
    TokenSetupError,
    signature_algorithm_oid,
)
from hsm._session import module_lock
from hsm.algorithms import digest_info
from hsm.softhsm import init_softhsm_token, softhsm_token_labels

_CRYPTO_HASHES: dict[HashAlg, Callable[[], hashes.HashAlgorithm]] = {
    HashAlg.SHA256: hashes.SHA256,
    HashAlg.SHA384: hashes.SHA384,
    HashAlg.SHA512: hashes.SHA512,
}


@pytest.fixture(scope="session")
def key_cache() -> dict[KeyType, KeyHandle]:
    """Keys made once per session: RSA-3072 generation is slow."""
    return {}


async def shared_key(
    hsm: Hsm, cache: dict[KeyType, KeyHandle], key_type: KeyType
) -> KeyHandle:
    if key_type not in cache:
        cache[key_type] = await hsm.generate_key(key_type, label=f"shared {key_type}")
    return cache[key_type]


def digest_of(hash_alg: HashAlg, data: bytes = b"document") -> bytes:
    return hashlib.new(hash_alg.value, data).digest()


def verify(
    key: KeyHandle,
    signature: bytes,
    digest: bytes,
    mechanism: SignMechanism,
    hash_alg: HashAlg,
    salt_length: int | None = None,
) -> None:
    """Raise cryptography's InvalidSignature unless the signature holds."""
    public_key = load_der_public_key(key.public_key_der)
    prehashed = utils.Prehashed(_CRYPTO_HASHES[hash_alg]())
    if mechanism is SignMechanism.ECDSA:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        public_key.verify(signature, digest, ec.ECDSA(prehashed))
        return
    assert isinstance(public_key, rsa.RSAPublicKey)
    if mechanism is SignMechanism.RSA_PKCS1V15:
        public_key.verify(signature, digest, padding.PKCS1v15(), prehashed)
        return
    pss = padding.PSS(
        mgf=padding.MGF1(_CRYPTO_HASHES[hash_alg]()),
        salt_length=hash_alg.digest_size if salt_length is None else salt_length,
    )
    public_key.verify(signature, digest, pss, prehashed)


def read_attributes(
    config: HsmConfig, key_id: str, object_class: ObjectClass, attrs: list[Attribute]
) -> dict[Attribute, Any]:
    """Read attributes straight from the token, on a session of our own.

    The session needs no PIN: the open ``Hsm`` holds the process's login.
    """
    with module_lock(config.module_path):
        token = pkcs11.lib(config.module_path).get_token(token_label=config.token_label)
        session = token.open()
        try:
            (obj,) = session.get_objects(
                {Attribute.CLASS: object_class, Attribute.ID: bytes.fromhex(key_id)}
            )
            return {attr: obj[attr] for attr in attrs}
        finally:
            session.close()


# -- algorithms -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SHA-256", HashAlg.SHA256),
        ("sha256", HashAlg.SHA256),
        ("SHA256", HashAlg.SHA256),
        ("2.16.840.1.101.3.4.2.1", HashAlg.SHA256),
        ("SHA-384", HashAlg.SHA384),
        ("2.16.840.1.101.3.4.2.2", HashAlg.SHA384),
        ("sha512", HashAlg.SHA512),
        ("2.16.840.1.101.3.4.2.3", HashAlg.SHA512),
    ],
)
def test_hash_alg_from_name_accepts_names_and_oids(
    text: str, expected: HashAlg
) -> None:
    assert HashAlg.from_name(text) is expected


@pytest.mark.parametrize("text", ["", "SHA-1", "md5", "sha3-256", "1.2.3", "SHA 256"])
def test_hash_alg_from_name_refuses_other_names(text: str) -> None:
    with pytest.raises(ValueError, match="unsupported hash algorithm"):
        HashAlg.from_name(text)


def test_hash_alg_sizes_and_oids() -> None:
    assert [alg.digest_size for alg in HashAlg] == [32, 48, 64]
    assert HashAlg.SHA512.oid == "2.16.840.1.101.3.4.2.3"


@pytest.mark.parametrize(
    ("mechanism", "hash_alg", "oid"),
    [
        (SignMechanism.ECDSA, HashAlg.SHA256, "1.2.840.10045.4.3.2"),
        (SignMechanism.ECDSA, HashAlg.SHA384, "1.2.840.10045.4.3.3"),
        (SignMechanism.ECDSA, HashAlg.SHA512, "1.2.840.10045.4.3.4"),
        (SignMechanism.RSA_PKCS1V15, HashAlg.SHA256, "1.2.840.113549.1.1.11"),
        (SignMechanism.RSA_PKCS1V15, HashAlg.SHA384, "1.2.840.113549.1.1.12"),
        (SignMechanism.RSA_PKCS1V15, HashAlg.SHA512, "1.2.840.113549.1.1.13"),
        (SignMechanism.RSA_PSS, HashAlg.SHA256, "1.2.840.113549.1.1.10"),
        (SignMechanism.RSA_PSS, HashAlg.SHA512, "1.2.840.113549.1.1.10"),
    ],
)
def test_signature_algorithm_oid(
    mechanism: SignMechanism, hash_alg: HashAlg, oid: str
) -> None:
    assert signature_algorithm_oid(mechanism, hash_alg) == oid


def test_digest_info_is_the_rfc8017_encoding_hsm2() -> None:
    # RFC 8017 section 9.2, note 1, gives these prefixes verbatim.
    digest = bytes(32)
    assert digest_info(HashAlg.SHA256, digest) == (
        bytes.fromhex("3031300d060960864801650304020105000420") + digest
    )


def test_config_repr_hides_the_pin() -> None:
    config = HsmConfig(module_path="/x.so", token_label="t", pin="s3cr3t-pin")
    assert "s3cr3t-pin" not in repr(config)


def test_config_refuses_empty_pool() -> None:
    with pytest.raises(ValueError, match="pool_size"):
        HsmConfig(module_path="/x.so", token_label="t", pin="1", pool_size=0)


# -- HSM-1: key generation ----------------------------------------------------


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.RSA_2048])
async def test_private_key_is_sensitive_and_not_extractable_hsm1(
    hsm: Hsm, hsm_config: HsmConfig, key_type: KeyType
) -> None:
    key = await hsm.generate_key(key_type, label="hsm-1 check")

    private = await asyncio.to_thread(
        read_attributes,
        hsm_config,
        key.key_id,
        ObjectClass.PRIVATE_KEY,
        [
            Attribute.TOKEN,
            Attribute.SENSITIVE,
            Attribute.EXTRACTABLE,
            Attribute.PRIVATE,
            Attribute.SIGN,
            Attribute.DECRYPT,
            Attribute.UNWRAP,
            Attribute.DERIVE,
            Attribute.ALWAYS_SENSITIVE,
            Attribute.NEVER_EXTRACTABLE,
            Attribute.LOCAL,
            Attribute.LABEL,
        ],
    )
    assert private == {
        Attribute.TOKEN: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.PRIVATE: True,
        Attribute.SIGN: True,
        Attribute.DECRYPT: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
        # Generated inside the token and never seen in clear outside it.
        Attribute.ALWAYS_SENSITIVE: True,
        Attribute.NEVER_EXTRACTABLE: True,
        Attribute.LOCAL: True,
        Attribute.LABEL: "hsm-1 check",
    }

    public = await asyncio.to_thread(
        read_attributes,
        hsm_config,
        key.key_id,
        ObjectClass.PUBLIC_KEY,
        [Attribute.TOKEN, Attribute.VERIFY, Attribute.ENCRYPT, Attribute.WRAP],
    )
    assert public == {
        Attribute.TOKEN: True,
        Attribute.VERIFY: True,
        Attribute.ENCRYPT: False,
        Attribute.WRAP: False,
    }
    await hsm.destroy_key(key.key_id)


async def test_private_key_value_cannot_be_read_hsm1(
    hsm: Hsm, hsm_config: HsmConfig
) -> None:
    key = await hsm.generate_key(KeyType.EC_P256, label="hsm-1 value")
    with pytest.raises(p11e.AttributeSensitive):
        await asyncio.to_thread(
            read_attributes,
            hsm_config,
            key.key_id,
            ObjectClass.PRIVATE_KEY,
            [Attribute.VALUE],
        )
    await hsm.destroy_key(key.key_id)


async def test_generated_key_ids_are_random_16_bytes_hsm1(hsm: Hsm) -> None:
    first = await hsm.generate_key(KeyType.EC_P256, label="a")
    second = await hsm.generate_key(KeyType.EC_P256, label="a")
    assert len(bytes.fromhex(first.key_id)) == 16
    assert first.key_id != second.key_id
    await hsm.destroy_key(first.key_id)
    await hsm.destroy_key(second.key_id)


@pytest.mark.parametrize(
    ("key_type", "check"),
    [
        (
            KeyType.EC_P256,
            lambda k: (
                isinstance(k, ec.EllipticCurvePublicKey)
                and isinstance(k.curve, ec.SECP256R1)
            ),
        ),
        (
            KeyType.EC_P384,
            lambda k: (
                isinstance(k, ec.EllipticCurvePublicKey)
                and isinstance(k.curve, ec.SECP384R1)
            ),
        ),
        (
            KeyType.RSA_2048,
            lambda k: (
                isinstance(k, rsa.RSAPublicKey)
                and k.key_size == 2048
                and k.public_numbers().e == 65537
            ),
        ),
    ],
)
async def test_public_key_der_is_subject_public_key_info(
    hsm: Hsm,
    key_cache: dict[KeyType, KeyHandle],
    key_type: KeyType,
    check: Callable[[object], bool],
) -> None:
    key = await shared_key(hsm, key_cache, key_type)
    assert key.key_type is key_type
    assert check(load_der_public_key(key.public_key_der))


async def test_get_key_returns_what_generate_key_returned(
    hsm: Hsm, hsm_config: HsmConfig, key_cache: dict[KeyType, KeyHandle]
) -> None:
    key = await shared_key(hsm, key_cache, KeyType.EC_P384)
    # A second Hsm has an empty handle cache and reads the token afresh.
    async with await Hsm.open(hsm_config) as other:
        assert await other.get_key(key.key_id) == key
        assert await other.get_key(key.key_id.upper()) == key


# -- HSM-2: signing precomputed digests ----------------------------------------

_SIGNING_CASES = [
    (key_type, mechanism, hash_alg)
    for key_type, mechanisms in [
        (KeyType.EC_P256, [SignMechanism.ECDSA]),
        (KeyType.EC_P384, [SignMechanism.ECDSA]),
        (KeyType.RSA_2048, [SignMechanism.RSA_PKCS1V15, SignMechanism.RSA_PSS]),
        (KeyType.RSA_3072, [SignMechanism.RSA_PKCS1V15, SignMechanism.RSA_PSS]),
    ]
    for mechanism in mechanisms
    for hash_alg in HashAlg
]


@pytest.mark.parametrize(("key_type", "mechanism", "hash_alg"), _SIGNING_CASES)
async def test_signature_over_digest_verifies_hsm2(
    hsm: Hsm,
    key_cache: dict[KeyType, KeyHandle],
    key_type: KeyType,
    mechanism: SignMechanism,
    hash_alg: HashAlg,
) -> None:
    key = await shared_key(hsm, key_cache, key_type)
    digest = digest_of(hash_alg)

    signature = await hsm.sign_digest(
        key.key_id, digest, mechanism=mechanism, hash_alg=hash_alg
    )

    verify(key, signature, digest, mechanism, hash_alg)
    if mechanism is SignMechanism.ECDSA:
        # DER SEQUENCE of two INTEGERs, not PKCS#11's raw r || s.
        r, s = utils.decode_dss_signature(signature)
        assert r > 0
        assert s > 0
    else:
        assert len(signature) == key_type.bits // 8


async def test_signature_does_not_verify_for_another_digest_hsm2(
    hsm: Hsm, key_cache: dict[KeyType, KeyHandle]
) -> None:
    from cryptography.exceptions import InvalidSignature

    key = await shared_key(hsm, key_cache, KeyType.EC_P256)
    signature = await hsm.sign_digest(
        key.key_id,
        digest_of(HashAlg.SHA256, b"one"),
        mechanism=SignMechanism.ECDSA,
        hash_alg=HashAlg.SHA256,
    )
    with pytest.raises(InvalidSignature):
        verify(
            key,
            signature,
            digest_of(HashAlg.SHA256, b"two"),
            SignMechanism.ECDSA,
            HashAlg.SHA256,
        )


@pytest.mark.parametrize("salt_length", [0, 20, 32, 222])
async def test_pss_uses_the_requested_salt_length_hsm2(
    hsm: Hsm, key_cache: dict[KeyType, KeyHandle], salt_length: int
) -> None:
    key = await shared_key(hsm, key_cache, KeyType.RSA_2048)
    digest = digest_of(HashAlg.SHA256)
    signature = await hsm.sign_digest(
        key.key_id,
        digest,
        mechanism=SignMechanism.RSA_PSS,
        hash_alg=HashAlg.SHA256,
        pss_salt_length=salt_length,
    )
    verify(key, signature, digest, SignMechanism.RSA_PSS, HashAlg.SHA256, salt_length)


async def test_pss_salt_longer_than_the_key_allows_is_refused_hsm2(
    hsm: Hsm, key_cache: dict[KeyType, KeyHandle]
) -> None:
    key = await shared_key(hsm, key_cache, KeyType.RSA_2048)
    with pytest.raises(ValueError, match="PSS salt"):
        await hsm.sign_digest(
            key.key_id,
            digest_of(HashAlg.SHA256),
            mechanism=SignMechanism.RSA_PSS,
            hash_alg=HashAlg.SHA256,
            pss_salt_length=223,
        )


@pytest.mark.parametrize(
    ("mechanism", "salt"),
    [(SignMechanism.RSA_PSS, -1), (SignMechanism.RSA_PKCS1V15, 32)],
)
async def test_bad_salt_argument_is_refused_hsm2(
    hsm: Hsm,
    key_cache: dict[KeyType, KeyHandle],
    mechanism: SignMechanism,
    salt: int,
) -> None:
    key = await shared_key(hsm, key_cache, KeyType.RSA_2048)
    with pytest.raises(ValueError, match="pss_salt_length"):
        await hsm.sign_digest(
            key.key_id,
            digest_of(HashAlg.SHA256),
            mechanism=mechanism,
            hash_alg=HashAlg.SHA256,
            pss_salt_length=salt,
        )


@pytest.mark.parametrize(
    ("hash_alg", "length"),
    [
        (HashAlg.SHA256, 0),
        (HashAlg.SHA256, 31),
        (HashAlg.SHA256, 33),
        (HashAlg.SHA256, 48),
        (HashAlg.SHA384, 32),
        (HashAlg.SHA512, 48),
    ],
)
async def test_digest_of_wrong_length_is_refused_hsm2(
    hsm: Hsm,
    key_cache: dict[KeyType, KeyHandle],
    hash_alg: HashAlg,
    length: int,
) -> None:
    key = await shared_key(hsm, key_cache, KeyType.EC_P256)
    with pytest.raises(ValueError, match="digest must be"):
        await hsm.sign_digest(
            key.key_id,
            bytes(length),
            mechanism=SignMechanism.ECDSA,
            hash_alg=hash_alg,
        )


@pytest.mark.parametrize(
    ("key_type", "mechanism"),
    [
        (KeyType.RSA_2048, SignMechanism.ECDSA),
        (KeyType.EC_P256, SignMechanism.RSA_PKCS1V15),
        (KeyType.EC_P256, SignMechanism.RSA_PSS),
    ],
)
async def test_mechanism_of_the_other_key_family_is_refused_hsm2(
    hsm: Hsm,
    key_cache: dict[KeyType, KeyHandle],
    key_type: KeyType,
    mechanism: SignMechanism,
) -> None:
    key = await shared_key(hsm, key_cache, key_type)
    with pytest.raises(MechanismUnsupported):
        await hsm.sign_digest(
            key.key_id,
            digest_of(HashAlg.SHA256),
            mechanism=mechanism,
            hash_alg=HashAlg.SHA256,
        )


async def test_unknown_key_id_raises_key_not_found(hsm: Hsm) -> None:
    unknown = secrets.token_hex(16)
    with pytest.raises(KeyNotFound, match=unknown):
        await hsm.get_key(unknown)
    with pytest.raises(KeyNotFound):
        await hsm.sign_digest(
            unknown,
            digest_of(HashAlg.SHA256),
            mechanism=SignMechanism.ECDSA,
            hash_alg=HashAlg.SHA256,
        )
    with pytest.raises(KeyNotFound):
        await hsm.destroy_key(unknown)


@pytest.mark.parametrize("key_id", ["", "not hex", "abc"])
async def test_malformed_key_id_is_refused(hsm: Hsm, key_id: str) -> None:
    with pytest.raises(ValueError, match="key id"):
        await hsm.get_key(key_id)


async def test_destroyed_key_is_gone(hsm: Hsm) -> None:
    key = await hsm.generate_key(KeyType.EC_P256, label="short lived")
    digest = digest_of(HashAlg.SHA256)
    await hsm.sign_digest(
        key.key_id, digest, mechanism=SignMechanism.ECDSA, hash_alg=HashAlg.SHA256
    )

    await hsm.destroy_key(key.key_id)

    with pytest.raises(KeyNotFound):
        await hsm.get_key(key.key_id)
    # Every pooled session had its cached handle dropped.
    for _ in range(8):
        with pytest.raises(KeyNotFound):
            await hsm.sign_digest(
                key.key_id,
                digest,
                mechanism=SignMechanism.ECDSA,
                hash_alg=HashAlg.SHA256,
            )


async def test_key_destroyed_by_another_instance_raises_key_not_found(
    hsm: Hsm, hsm_config: HsmConfig
) -> None:
    key = await hsm.generate_key(KeyType.EC_P256, label="destroyed elsewhere")
    digest = digest_of(HashAlg.SHA256)
    await hsm.sign_digest(
        key.key_id, digest, mechanism=SignMechanism.ECDSA, hash_alg=HashAlg.SHA256
    )
    async with await Hsm.open(hsm_config) as other:
        await other.destroy_key(key.key_id)

    # The first instance still caches a handle to the destroyed object.
    with pytest.raises(KeyNotFound):
        await hsm.sign_digest(
            key.key_id, digest, mechanism=SignMechanism.ECDSA, hash_alg=HashAlg.SHA256
        )


# -- HSM-3: sessions, login, threads --------------------------------------------


async def test_slow_token_work_does_not_block_the_event_loop_hsm3(hsm: Hsm) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.002)

    ticker = asyncio.create_task(tick())
    loop = asyncio.get_running_loop()
    started = loop.time()
    # RSA key generation keeps SoftHSM busy long enough to see a stalled
    # loop; a blocked loop would tick about once per key.
    keys = []
    while loop.time() - started < 0.25:
        keys.append(await hsm.generate_key(KeyType.RSA_2048, label="slow"))
    elapsed = loop.time() - started
    stop.set()
    await ticker
    for key in keys:
        await hsm.destroy_key(key.key_id)
    # A blocked loop ticks about once per key; a free one many times per
    # key, even on a machine busy with other work.
    assert elapsed > 0
    assert ticks >= 5 * len(keys) + 10


async def test_token_calls_run_on_worker_threads_hsm3(hsm: Hsm) -> None:
    def where(slot: object) -> int:
        return threading.get_ident()

    assert await hsm._pool.call(where) != threading.get_ident()


async def test_concurrent_signatures_all_verify_hsm3(
    hsm_config: HsmConfig, key_cache: dict[KeyType, KeyHandle], hsm: Hsm
) -> None:
    ec_key = await shared_key(hsm, key_cache, KeyType.EC_P256)
    rsa_key = await shared_key(hsm, key_cache, KeyType.RSA_2048)
    config = dataclasses.replace(hsm_config, pool_size=2)
    async with await Hsm.open(config) as small:
        cases = [
            (
                ec_key if i % 2 else rsa_key,
                SignMechanism.ECDSA if i % 2 else SignMechanism.RSA_PSS,
                digest_of(HashAlg.SHA256, b"doc %d" % i),
            )
            for i in range(50)
        ]
        signatures = await asyncio.gather(
            *(
                small.sign_digest(
                    key.key_id, digest, mechanism=mechanism, hash_alg=HashAlg.SHA256
                )
                for key, mechanism, digest in cases
            )
        )
    for (key, mechanism, digest), signature in zip(cases, signatures, strict=True):
        verify(key, signature, digest, mechanism, HashAlg.SHA256)


async def test_cancelled_call_leaves_the_pool_usable_hsm3(
    hsm_config: HsmConfig, key_cache: dict[KeyType, KeyHandle], hsm: Hsm
) -> None:
    key = await shared_key(hsm, key_cache, KeyType.EC_P256)
    digest = digest_of(HashAlg.SHA256)
    config = dataclasses.replace(hsm_config, pool_size=1)
    async with await Hsm.open(config) as single:
        calls = [
            asyncio.create_task(
                single.sign_digest(
                    key.key_id,
                    digest,
                    mechanism=SignMechanism.ECDSA,
                    hash_alg=HashAlg.SHA256,
                )
            )
            for _ in range(20)
        ]
        await asyncio.sleep(0)
        for call in calls[::2]:
            call.cancel()
        results = await asyncio.gather(*calls, return_exceptions=True)
        for call, result in zip(calls, results, strict=True):
            if not call.cancelled():
                assert isinstance(result, bytes)
        signature = await single.sign_digest(
            key.key_id, digest, mechanism=SignMechanism.ECDSA, hash_alg=HashAlg.SHA256
        )
    verify(key, signature, digest, SignMechanism.ECDSA, HashAlg.SHA256)


async def test_lost_sessions_are_reopened_hsm3(
    hsm: Hsm, key_cache: dict[KeyType, KeyHandle]
) -> None:
    key = await shared_key(hsm, key_cache, KeyType.EC_P256)
    digest = digest_of(HashAlg.SHA256)
    slots = hsm._pool.slots
    before = [slot.session for slot in slots]

    # Close every pooled session behind the pool's back: their handles die
    # in the module, exactly as when a network HSM drops a connection.
    def close_all() -> None:
        for session in before:
            session.close()

    await asyncio.to_thread(close_all)

    for _ in range(len(slots) * 2):
        signature = await hsm.sign_digest(
            key.key_id, digest, mechanism=SignMechanism.ECDSA, hash_alg=HashAlg.SHA256
        )
        verify(key, signature, digest, SignMechanism.ECDSA, HashAlg.SHA256)
    assert any(slot.session is not old for slot, old in zip(slots, before, strict=True))


async def test_login_ended_by_a_logout_is_restored_hsm3(
    hsm: Hsm, key_cache: dict[KeyType, KeyHandle]
) -> None:
    key = await shared_key(hsm, key_cache, KeyType.EC_P256)
    digest = digest_of(HashAlg.SHA256)
    await hsm.sign_digest(
        key.key_id, digest, mechanism=SignMechanism.ECDSA, hash_alg=HashAlg.SHA256
    )

    # Closing the session that logged in issues C_Logout: every session of
    # the process becomes a public session and the cached private-key
    # handles die.
    await asyncio.to_thread(hsm._login.anchor.close)

    signature = await hsm.sign_digest(
        key.key_id, digest, mechanism=SignMechanism.ECDSA, hash_alg=HashAlg.SHA256
    )
    verify(key, signature, digest, SignMechanism.ECDSA, HashAlg.SHA256)


async def test_module_reinitialised_under_the_pool_recovers_hsm3(
    hsm: Hsm, hsm_config: HsmConfig, key_cache: dict[KeyType, KeyHandle]
) -> None:
    key = await shared_key(hsm, key_cache, KeyType.EC_P256)
    digest = digest_of(HashAlg.SHA256)

    # C_Finalize + C_Initialize: every session and the login are gone, as
    # after a token is pulled and put back.
    def reinitialize() -> None:
        with module_lock(hsm_config.module_path):
            pkcs11.lib(hsm_config.module_path).reinitialize()

    await asyncio.to_thread(reinitialize)

    signature = await hsm.sign_digest(
        key.key_id, digest, mechanism=SignMechanism.ECDSA, hash_alg=HashAlg.SHA256
    )
    verify(key, signature, digest, SignMechanism.ECDSA, HashAlg.SHA256)


async def test_two_instances_share_one_login_hsm3(
    hsm_config: HsmConfig, key_cache: dict[KeyType, KeyHandle], hsm: Hsm
) -> None:
    key = await shared_key(hsm, key_cache, KeyType.EC_P256)
    digest = digest_of(HashAlg.SHA256)
    async with await Hsm.open(hsm_config) as second:
        await second.sign_digest(
            key.key_id, digest, mechanism=SignMechanism.ECDSA, hash_alg=HashAlg.SHA256
        )
        assert second._login is hsm._login
    # Closing the second instance must not log the first one out.
    signature = await hsm.sign_digest(
        key.key_id, digest, mechanism=SignMechanism.ECDSA, hash_alg=HashAlg.SHA256
    )
    verify(key, signature, digest, SignMechanism.ECDSA, HashAlg.SHA256)


async def test_login_made_by_other_code_is_shared_hsm3(
    hsm_config: HsmConfig,
) -> None:
    # No Hsm is open here; raw python-pkcs11 code logs in first.
    def raw_login() -> pkcs11.Session:
        with module_lock(hsm_config.module_path):
            token = pkcs11.lib(hsm_config.module_path).get_token(
                token_label=hsm_config.token_label
            )
            return token.open(user_pin=hsm_config.pin)

    raw = await asyncio.to_thread(raw_login)
    async with await Hsm.open(hsm_config) as shared:
        key = await shared.generate_key(KeyType.EC_P256, label="shared login")
        digest = digest_of(HashAlg.SHA256)
        # The other code closes its session, logging the whole process out.
        await asyncio.to_thread(raw.close)
        signature = await shared.sign_digest(
            key.key_id, digest, mechanism=SignMechanism.ECDSA, hash_alg=HashAlg.SHA256
        )
        verify(key, signature, digest, SignMechanism.ECDSA, HashAlg.SHA256)
        await shared.destroy_key(key.key_id)


async def test_wrong_pin_raises_pin_incorrect_without_the_pin(
    hsm_config: HsmConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + secrets.token_hex(6)
    with pytest.raises(PinIncorrect) as refused:
        await Hsm.open(dataclasses.replace(hsm_config, pin=wrong))
    for text in (str(refused.value), repr(refused.value), str(refused.value.__cause__)):
        assert wrong not in text
        assert hsm_config.pin not in text
    assert wrong not in caplog.text
    assert hsm_config.pin not in caplog.text


async def test_wrong_pin_is_refused_while_the_token_is_logged_in(
    hsm: Hsm, hsm_config: HsmConfig
) -> None:
    # The token itself answers CKR_USER_ALREADY_LOGGED_IN without looking at
    # the PIN, so the process must check it.
    wrong = "wrong-" + secrets.token_hex(6)
    with pytest.raises(PinIncorrect) as refused:
        await Hsm.open(dataclasses.replace(hsm_config, pin=wrong))
    assert wrong not in str(refused.value)
    assert hsm_config.pin not in str(refused.value)


async def test_unknown_token_label_raises_token_not_found(
    hsm_config: HsmConfig,
) -> None:
    with pytest.raises(TokenNotFound, match="no-such-token"):
        await Hsm.open(dataclasses.replace(hsm_config, token_label="no-such-token"))


async def test_closed_hsm_refuses_calls(hsm_config: HsmConfig) -> None:
    opened = await Hsm.open(hsm_config)
    await opened.close()
    await opened.close()  # idempotent
    with pytest.raises(SessionUnavailable):
        await opened.get_key(secrets.token_hex(16))


async def test_close_waits_for_calls_in_flight_hsm3(
    hsm_config: HsmConfig, key_cache: dict[KeyType, KeyHandle], hsm: Hsm
) -> None:
    key = await shared_key(hsm, key_cache, KeyType.EC_P256)
    digest = digest_of(HashAlg.SHA256)
    closing = await Hsm.open(dataclasses.replace(hsm_config, pool_size=1))
    calls = [
        asyncio.create_task(
            closing.sign_digest(
                key.key_id,
                digest,
                mechanism=SignMechanism.ECDSA,
                hash_alg=HashAlg.SHA256,
            )
        )
        for _ in range(10)
    ]
    await asyncio.sleep(0)
    await closing.close()
    for signature in await asyncio.gather(*calls):
        verify(key, signature, digest, SignMechanism.ECDSA, HashAlg.SHA256)


def test_hsm_repr_names_the_token_only(hsm: Hsm, hsm_config: HsmConfig) -> None:
    assert hsm_config.token_label in repr(hsm)
    assert hsm_config.pin not in repr(hsm)
    assert hsm_config.pin not in repr(hsm._login)


# -- SoftHSM token set-up ---------------------------------------------------------


def test_init_softhsm_token_is_idempotent(tmp_path: Path) -> None:
    conf = init_softhsm_token(tmp_path, label="dev", so_pin="12345678", user_pin="1234")
    again = init_softhsm_token(
        tmp_path, label="dev", so_pin="12345678", user_pin="1234"
    )

    assert conf == again == tmp_path / "softhsm2.conf"
    text = conf.read_text()
    assert f"directories.tokendir = {(tmp_path / 'tokens').resolve()}" in text
    assert "objectstore.backend = file" in text
    assert "log.level = ERROR" in text
    assert softhsm_token_labels(conf) == ["dev"]


def test_missing_softhsm2_util_names_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TokenSetupError, match="softhsm2"):
        init_softhsm_token(tmp_path, label="dev", so_pin="12345678", user_pin="1234")
