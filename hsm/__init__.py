"""PKCS#11 signing keys for the remote signing service.

Keys are generated and kept in the token; this package signs precomputed
digests with them and builds the X.509 objects around them. It knows nothing
of users, requests or HTTP.
"""

from .algorithms import HashAlg, KeyType, SignMechanism, signature_algorithm_oid
from .errors import (
    HsmError,
    InvalidCsr,
    KeyNotFound,
    KeyPurposeMismatch,
    MechanismUnsupported,
    PinIncorrect,
    PinLocked,
    SessionUnavailable,
    TokenNotFound,
    TokenSetupError,
)
from .model import HsmConfig, KeyHandle
from .token import Hsm

__all__ = [
    "HashAlg",
    "Hsm",
    "HsmConfig",
    "HsmError",
    "InvalidCsr",
    "KeyHandle",
    "KeyNotFound",
    "KeyPurposeMismatch",
    "KeyType",
    "MechanismUnsupported",
    "PinIncorrect",
    "PinLocked",
    "SessionUnavailable",
    "SignMechanism",
    "TokenNotFound",
    "TokenSetupError",
    "signature_algorithm_oid",
]
