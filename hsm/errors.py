"""Errors raised by the HSM layer.

Every python-pkcs11 exception is turned into one of these at the package
boundary (``raise ... from e``). Messages name the condition and, where it
helps, the key id or token label; they never carry a PIN or key material.
"""

from __future__ import annotations

__all__ = [
    "HsmError",
    "InvalidCsr",
    "KeyNotFound",
    "KeyPurposeMismatch",
    "MechanismUnsupported",
    "PinIncorrect",
    "PinLocked",
    "SessionUnavailable",
    "TokenNotFound",
    "TokenSetupError",
]


class HsmError(Exception):
    """Root of every error raised by the ``hsm`` package."""


class TokenNotFound(HsmError):
    """No token with the configured label is visible to the PKCS#11 module."""


class TokenSetupError(HsmError):
    """A development token could not be created (softhsm2-util failed)."""


class PinIncorrect(HsmError):
    """The token refused the user PIN."""


class PinLocked(HsmError):
    """The token has locked the user PIN after too many failures."""


class KeyNotFound(HsmError):
    """No private key with the requested id exists on the token."""


class KeyPurposeMismatch(HsmError):
    """The key's label on the token is not the one the caller required."""


class MechanismUnsupported(HsmError):
    """The key type and the requested mechanism do not go together, or the
    token does not offer the mechanism."""


class SessionUnavailable(HsmError):
    """No usable PKCS#11 session: the HSM was closed, or reopening a lost
    session failed."""


class InvalidCsr(HsmError):
    """A PKCS#10 request is malformed or its signature does not verify."""
