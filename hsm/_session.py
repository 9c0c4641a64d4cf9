"""PKCS#11 sessions and the login they share (HSM-3).

Two facts of PKCS#11 v2.40 shape this module:

* Login state belongs to the application, not to a session (section 5.6,
  C_Login): once one session has logged in, every session of the process on
  that token is a user session, a second C_Login fails with
  CKR_USER_ALREADY_LOGGED_IN, and C_Logout on any session logs all of them
  out. So each token gets one :class:`Login`, shared by every ``Hsm`` of the
  process and reference counted; its *anchor* session carries the C_Login
  and the pool's sessions are opened without a PIN.
* python-pkcs11 0.10 calls ``C_Initialize(NULL_PTR)``, which tells the module
  that the application will not call it from several threads at once
  (section 5.4). SoftHSM 2.6 then turns its own mutexes off. Every call into
  a module therefore runs under that module's process-wide lock, taken by
  :func:`module_lock`. python-pkcs11 does release the GIL around each C call
  (``with nogil`` in its Cython source), so a worker thread inside C_Sign
  never stalls the event loop; but signatures are made one at a time per
  module. TODO: take this lock away when python-pkcs11 can pass
  CKF_OS_LOCKING_OK to C_Initialize and the module honours it.
"""

from __future__ import annotations

import hmac
import logging
import threading
from dataclasses import dataclass

import pkcs11
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.types import SignMixin

from ._objects import find_objects
from .algorithms import KeyType
from .errors import (
    HsmError,
    MechanismUnsupported,
    PinIncorrect,
    PinLocked,
    SessionUnavailable,
    TokenNotFound,
)

__all__ = [
    "SESSION_LOST",
    "CachedKey",
    "Login",
    "SessionSlot",
    "acquire_login",
    "module_lock",
    "release_login",
    "translate_error",
]

logger = logging.getLogger(__name__)

# Return codes after which the session handle is gone for good: reopen it.
SESSION_LOST: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.TokenNotPresent,
)

# A template that matches nothing on a sane token; searching with it is the
# cheapest call that fails when the anchor session's handle has died.
_PROBE_TEMPLATE = {
    Attribute.CLASS: ObjectClass.DATA,
    Attribute.LABEL: "sigil-session-probe",
}

_locks_guard = threading.Lock()
_module_locks: dict[str, threading.Lock] = {}
_logins_guard = threading.Lock()
_logins: dict[tuple[str, bytes], Login] = {}


def module_lock(module_path: str) -> threading.Lock:
    """The lock that serialises every call into one PKCS#11 module."""
    with _locks_guard:
        lock = _module_locks.get(module_path)
        if lock is None:
            lock = _module_locks[module_path] = threading.Lock()
        return lock


@dataclass(slots=True)
class CachedKey:
    """A private key object found on one session, with what we derived."""

    private_key: SignMixin
    key_type: KeyType
    label: str
    public_key_der: bytes | None = None


class SessionSlot:
    """One pooled session and the key handles found through it.

    Object handles are only meaningful within the application, and SoftHSM
    drops handles of private objects on logout, so the cache is cleared
    whenever the session is replaced and entries are dropped when a handle
    turns out stale.
    """

    __slots__ = ("keys", "session")

    def __init__(self, session: pkcs11.Session) -> None:
        self.session = session
        self.keys: dict[bytes, CachedKey] = {}


class Login:
    """The one user login this process holds on a token."""

    def __init__(self, *, key: tuple[str, bytes], token: pkcs11.Token, pin: str):
        self.key = key
        self.token = token
        self._pin = pin
        self.users = 0
        self.anchor = self._open_anchor()

    def __repr__(self) -> str:
        return f"<Login token={self.token.label!r} users={self.users}>"

    def pin_matches(self, pin: str) -> bool:
        return hmac.compare_digest(self._pin.encode(), pin.encode())

    def _open_anchor(self) -> pkcs11.Session:
        try:
            return self.token.open(user_pin=self._pin)
        except p11e.UserAlreadyLoggedIn:
            # Other code in this process logged in first (a raw python-pkcs11
            # session, say). The login is shared, so a public session sees
            # the private keys too. The token could not check our PIN, and
            # python-pkcs11 0.10 leaves the session of the refused C_Login
            # open (one handle, until C_Finalize).
            logger.warning(
                "token %r was already logged in by other code in this "
                "process; sharing that login, PIN not re-verified",
                self.token.label,
            )
            return self.token.open()

    def revive(self) -> None:
        """After a pooled session was lost: make sure the login still holds.

        The login lives as long as one session of the application is open on
        the token. If the anchor still answers, it does; otherwise (token
        removed, module finalised) log in again.
        """
        try:
            find_objects(self.anchor, _PROBE_TEMPLATE)
            return
        except SESSION_LOST as e:
            logger.warning(
                "login session of token %r lost (%s); logging in again",
                self.token.label,
                type(e).__name__,
            )
        self.anchor = self._open_anchor()

    def relogin_if_lost(self) -> bool:
        """Log in again if someone logged the whole process out.

        Any C_Logout in the process (python-pkcs11 issues one when a session
        opened with a PIN is closed) ends our login while every session stays
        open. Returns True when the login had been lost and is back.
        """
        try:
            session = self.token.open(user_pin=self._pin)
        except p11e.UserAlreadyLoggedIn:
            # Still logged in (python-pkcs11 leaves this probe's session open).
            return False
        logger.warning(
            "token %r had been logged out by other code in this process; "
            "logged in again",
            self.token.label,
        )
        # The old anchor is left open, not closed: closing a session that
        # logged in issues C_Logout, which would end the new login too.
        self.anchor = session
        return True

    def close(self) -> None:
        try:
            # C_Logout (if this anchor logged in) then C_CloseSession.
            self.anchor.close()
        except p11e.PKCS11Error as e:
            logger.debug(
                "closing login session of %r failed: %s",
                self.token.label,
                type(e).__name__,
            )


def acquire_login(module_path: str, token: pkcs11.Token, pin: str) -> Login:
    """Share the process's login on ``token``, logging in on first use.

    Call with the module lock held.
    """
    key = (module_path, bytes(token.serial))
    with _logins_guard:
        login = _logins.get(key)
        if login is None:
            login = Login(key=key, token=token, pin=pin)
            _logins[key] = login
        elif not login.pin_matches(pin):
            # While logged in the token answers CKR_USER_ALREADY_LOGGED_IN
            # before it looks at a PIN, so check against the one that worked.
            raise PinIncorrect(
                f"PIN differs from the one this process logged in to token "
                f"{token.label!r} with"
            )
        login.users += 1
        return login


def release_login(login: Login) -> None:
    """Drop one user of ``login``; the last one logs out. Module lock held."""
    with _logins_guard:
        login.users -= 1
        if login.users > 0:
            return
        _logins.pop(login.key, None)
    login.close()


def translate_error(error: p11e.PKCS11Error) -> HsmError:
    """The ``HsmError`` for a python-pkcs11 exception (raise it ``from`` it)."""
    name = type(error).__name__
    if isinstance(error, p11e.PinIncorrect | p11e.PinInvalid | p11e.PinLenRange):
        return PinIncorrect(f"the token refused the user PIN ({name})")
    if isinstance(error, p11e.PinLocked):
        return PinLocked("the token has locked the user PIN")
    if isinstance(error, SESSION_LOST):
        return SessionUnavailable(f"PKCS#11 session lost and not recovered ({name})")
    if isinstance(
        error,
        p11e.MechanismInvalid
        | p11e.MechanismParamInvalid
        | p11e.KeyTypeInconsistent
        | p11e.FunctionNotSupported,
    ):
        return MechanismUnsupported(f"the token refused the mechanism ({name})")
    if isinstance(error, p11e.NoSuchToken | p11e.TokenNotRecognised):
        return TokenNotFound(f"token not found ({name})")
    return HsmError(f"PKCS#11 call failed ({name})")
