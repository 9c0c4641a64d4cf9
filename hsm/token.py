"""The asynchronous face of one PKCS#11 token (HSM-1, HSM-2, HSM-3).

Blocking PKCS#11 work runs on worker threads of a dedicated pool, each with a
pooled session (``hsm._pool``); ``hsm._session`` explains how the login is
shared and why calls into a module are serialised.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self

import pkcs11
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import MGF, Mechanism
from pkcs11 import exceptions as p11e

from . import _objects
from ._pool import SessionPool
from ._session import (
    CachedKey,
    Login,
    SessionSlot,
    acquire_login,
    module_lock,
    release_login,
    translate_error,
)
from .algorithms import HashAlg, KeyType, SignMechanism, digest_info
from .errors import (
    HsmError,
    KeyNotFound,
    KeyPurposeMismatch,
    MechanismUnsupported,
    TokenNotFound,
)
from .model import HsmConfig, KeyHandle

__all__ = ["Hsm"]

logger = logging.getLogger(__name__)

_HASH_MECHANISMS = {
    HashAlg.SHA256: (Mechanism.SHA256, MGF.SHA256),
    HashAlg.SHA384: (Mechanism.SHA384, MGF.SHA384),
    HashAlg.SHA512: (Mechanism.SHA512, MGF.SHA512),
}
_STALE_HANDLE = (p11e.ObjectHandleInvalid, p11e.KeyHandleInvalid)


def _key_id_bytes(key_id: str) -> bytes:
    try:
        raw = bytes.fromhex(key_id)
    except (ValueError, TypeError):
        raise ValueError(f"key id must be hex, got {key_id[:80]!r}") from None
    if not raw:
        raise ValueError("key id must not be empty")
    return raw


def _ecdsa_der(raw: bytes) -> bytes:
    # PKCS#11 v2.40 section 2.3.1: CKM_ECDSA returns r || s, each as long as
    # the group order; X.509 and CMS want the DER SEQUENCE of RFC 3279.
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half]), int.from_bytes(raw[half:]))


def _max_pss_salt(key_type: KeyType, hash_alg: HashAlg) -> int:
    # RFC 8017 section 9.1.1: emLen >= hLen + sLen + 2, emLen = ceil((bits-1)/8)
    em_len = (key_type.bits - 1 + 7) // 8
    return em_len - hash_alg.digest_size - 2


class Hsm:
    """A pool of sessions on one token, logged in once.

    Make one with :meth:`open`; ``close`` it (or use ``async with``).
    """

    def __init__(
        self,
        *,
        config: HsmConfig,
        executor: ThreadPoolExecutor,
        login: Login,
        slots: list[SessionSlot],
    ) -> None:
        self._config = config
        self._login = login
        self._token: pkcs11.Token = login.token
        self._pool = SessionPool(
            slots,
            executor=executor,
            lock=module_lock(config.module_path),
            reopen=self._reopen,
            name=config.token_label,
        )
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<Hsm token={self._config.token_label!r} "
            f"sessions={len(self._pool.slots)} {state}>"
        )

    @classmethod
    async def open(cls, config: HsmConfig) -> Hsm:
        """Load the module, find the token, log in and open the session pool.

        The module reads its own configuration (SoftHSM: ``SOFTHSM2_CONF``)
        at the process's first C_Initialize; set it before the first open.
        """
        executor = ThreadPoolExecutor(
            max_workers=config.pool_size, thread_name_prefix="hsm"
        )
        loop = asyncio.get_running_loop()
        try:
            login, sessions = await loop.run_in_executor(
                executor, _open_blocking, config
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        slots = [SessionSlot(session) for session in sessions]
        logger.debug("opened token %r with %d sessions", config.token_label, len(slots))
        return cls(config=config, executor=executor, login=login, slots=slots)

    async def close(self) -> None:
        """Wait for calls in flight, close the sessions, drop the login."""
        if self._closed:
            return
        self._closed = True
        await self._pool.close(self._close_blocking)
        logger.debug("closed token %r", self._config.token_label)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def generate_key(self, key_type: KeyType, *, label: str) -> KeyHandle:
        """Generate a signing key pair in the token (HSM-1)."""
        key_type = KeyType(key_type)
        handle = await self._pool.call(self._generate_blocking, key_type, label)
        logger.debug("generated %s key %s", key_type.value, handle.key_id)
        return handle

    async def get_key(self, key_id: str) -> KeyHandle:
        """The key with this id; KeyNotFound if the token has none."""
        raw_id = _key_id_bytes(key_id)
        return await self._pool.call(self._get_key_blocking, raw_id)

    async def sign_digest(
        self,
        key_id: str,
        digest: bytes,
        *,
        mechanism: SignMechanism,
        hash_alg: HashAlg,
        pss_salt_length: int | None = None,
        label: str | None = None,
    ) -> bytes:
        """Sign a precomputed digest (HSM-2).

        ECDSA signatures come back DER-encoded; RSA ones as the raw octets.
        PSS uses MGF1 with the same hash and, by default, a salt as long as
        the digest. With ``label``, the key must carry exactly that
        CKA_LABEL, or :class:`KeyPurposeMismatch` is raised and nothing is
        signed: the token, not the caller's records, says what a key is for.
        """
        mechanism = SignMechanism(mechanism)
        hash_alg = HashAlg(hash_alg)
        if len(digest) != hash_alg.digest_size:
            raise ValueError(
                f"{hash_alg.value} digest must be {hash_alg.digest_size} bytes, "
                f"got {len(digest)}"
            )
        if pss_salt_length is not None:
            if mechanism is not SignMechanism.RSA_PSS:
                raise ValueError("pss_salt_length applies to rsa-pss only")
            if pss_salt_length < 0:
                raise ValueError("pss_salt_length must not be negative")
        raw_id = _key_id_bytes(key_id)
        signature = await self._pool.call(
            self._sign_blocking,
            raw_id,
            digest,
            mechanism,
            hash_alg,
            pss_salt_length,
            label,
        )
        if mechanism is SignMechanism.ECDSA:
            return _ecdsa_der(signature)
        return signature

    async def destroy_key(self, key_id: str) -> None:
        """Destroy both halves of a key pair; KeyNotFound if there is none."""
        raw_id = _key_id_bytes(key_id)
        await self._pool.call(self._destroy_blocking, raw_id)
        logger.debug("destroyed key %s", key_id)

    # -- session upkeep, on a worker thread with the module lock held ------

    def _reopen(self, slot: SessionSlot) -> None:
        try:
            slot.session.close()
        except p11e.PKCS11Error as e:
            logger.debug("closing the lost session failed: %s", type(e).__name__)
        slot.keys.clear()
        self._login.revive()
        slot.session = self._token.open(rw=True)

    def _close_blocking(self) -> None:
        for slot in self._pool.slots:
            slot.keys.clear()
            try:
                slot.session.close()
            except p11e.PKCS11Error as e:
                logger.debug("closing a session failed: %s", type(e).__name__)
        release_login(self._login)

    # -- the calls themselves, on a worker thread with the module lock held -

    def _cached_key(self, slot: SessionSlot, key_id: bytes) -> CachedKey:
        cached = slot.keys.get(key_id)
        if cached is not None:
            return cached
        session = slot.session
        private_key = _objects.find_private_key(session, key_id)
        if (
            private_key is None
            and _objects.find_public_key(session, key_id) is not None
            and self._login.relogin_if_lost()
        ):
            # Private objects are invisible without a login; the public half
            # being there suggested the login was gone, and it was.
            private_key = _objects.find_private_key(session, key_id)
        if private_key is None:
            raise KeyNotFound(f"no private key with id {key_id.hex()} on the token")
        # python-pkcs11 reads CKA_LABEL on attribute access; SignMixin's
        # stubs do not declare it.
        label = getattr(private_key, "label", None) or ""
        cached = CachedKey(private_key, _objects.key_type_of(private_key), label)
        slot.keys[key_id] = cached
        return cached

    def _generate_blocking(
        self, slot: SessionSlot, key_type: KeyType, label: str
    ) -> KeyHandle:
        key_id = secrets.token_bytes(16)
        public_key, private_key = _objects.generate_key_pair(
            slot.session, key_type, key_id=key_id, label=label
        )
        public_der = _objects.subject_public_key_info(public_key, key_type)
        slot.keys[key_id] = CachedKey(private_key, key_type, label, public_der)
        return KeyHandle(key_id.hex(), key_type, public_der, label)

    def _get_key_blocking(self, slot: SessionSlot, key_id: bytes) -> KeyHandle:
        cached = self._cached_key(slot, key_id)
        public_der = cached.public_key_der
        if public_der is None:
            public_key = _objects.find_public_key(slot.session, key_id)
            if public_key is None:
                raise KeyNotFound(f"key {key_id.hex()} has no public key object")
            public_der = _objects.subject_public_key_info(public_key, cached.key_type)
            cached.public_key_der = public_der
        return KeyHandle(key_id.hex(), cached.key_type, public_der, cached.label)

    def _sign_blocking(
        self,
        slot: SessionSlot,
        key_id: bytes,
        digest: bytes,
        mechanism: SignMechanism,
        hash_alg: HashAlg,
        pss_salt_length: int | None,
        label: str | None,
    ) -> bytes:
        cached = self._cached_key(slot, key_id)
        if label is not None and cached.label != label:
            raise KeyPurposeMismatch(f"key {key_id.hex()} is not labelled {label!r}")
        key_type = cached.key_type
        if not mechanism.fits(key_type):
            raise MechanismUnsupported(
                f"{mechanism.value} cannot sign with {key_type.value} key "
                f"{key_id.hex()}"
            )
        p11_mechanism: Mechanism
        param: Any = None
        if mechanism is SignMechanism.ECDSA:
            p11_mechanism, data = Mechanism.ECDSA, digest
        elif mechanism is SignMechanism.RSA_PKCS1V15:
            p11_mechanism, data = Mechanism.RSA_PKCS, digest_info(hash_alg, digest)
        else:
            salt = hash_alg.digest_size if pss_salt_length is None else pss_salt_length
            if salt > _max_pss_salt(key_type, hash_alg):
                raise ValueError(
                    f"PSS salt of {salt} bytes does not fit a {key_type.value} "
                    f"key with {hash_alg.value}"
                )
            hash_mechanism, mgf = _HASH_MECHANISMS[hash_alg]
            p11_mechanism, data = Mechanism.RSA_PKCS_PSS, digest
            param = (hash_mechanism, mgf, salt)
        try:
            return cached.private_key.sign(
                data, mechanism=p11_mechanism, mechanism_param=param
            )
        except _STALE_HANDLE:
            # The key was destroyed elsewhere, or a logout voided the
            # handles of private objects: look it up once more.
            slot.keys.pop(key_id, None)
            cached = self._cached_key(slot, key_id)
            return cached.private_key.sign(
                data, mechanism=p11_mechanism, mechanism_param=param
            )

    def _destroy_blocking(self, slot: SessionSlot, key_id: bytes) -> None:
        destroyed = _objects.destroy_key_objects(slot.session, key_id)
        # Every pooled session may hold a handle to the key; they are all
        # idle or waiting on the module lock that this thread holds.
        for other in self._pool.slots:
            other.keys.pop(key_id, None)
        if destroyed == 0:
            raise KeyNotFound(f"no key with id {key_id.hex()} on the token")


def _open_blocking(config: HsmConfig) -> tuple[Login, list[pkcs11.Session]]:
    with module_lock(config.module_path):
        try:
            lib = pkcs11.lib(config.module_path)
        except p11e.PKCS11Error as e:
            raise HsmError(
                f"cannot load PKCS#11 module {config.module_path!r}: {e}"
            ) from e
        try:
            token = lib.get_token(token_label=config.token_label)
        except p11e.NoSuchToken as e:
            raise TokenNotFound(
                f"no token labelled {config.token_label!r} in "
                f"{config.module_path!r} (SoftHSM lists its tokens at "
                "C_Initialize; one made later shows only in a new process)"
            ) from e
        except p11e.MultipleTokensReturned as e:
            raise TokenNotFound(
                f"several tokens are labelled {config.token_label!r}"
            ) from e
        try:
            login = acquire_login(config.module_path, token, config.pin)
        except p11e.PKCS11Error as e:
            raise translate_error(e) from e
        sessions: list[pkcs11.Session] = []
        try:
            for _ in range(config.pool_size):
                sessions.append(token.open(rw=True))
        except p11e.PKCS11Error as e:
            for session in sessions:
                session.close()
            release_login(login)
            raise translate_error(e) from e
        return login, sessions
