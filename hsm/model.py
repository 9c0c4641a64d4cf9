"""Value objects shared by the HSM layer and its callers."""

from __future__ import annotations

from dataclasses import dataclass, field

from .algorithms import KeyType

__all__ = ["HsmConfig", "KeyHandle"]


@dataclass(frozen=True)
class HsmConfig:
    """Where the token is and how to log in to it.

    ``pool_size`` bounds both the PKCS#11 sessions and the worker threads.
    """

    module_path: str
    token_label: str
    pin: str = field(repr=False)
    pool_size: int = 4

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {self.pool_size}")
        if not self.module_path:
            raise ValueError("module_path must name a PKCS#11 module")
        if not self.token_label:
            raise ValueError("token_label must not be empty")


@dataclass(frozen=True)
class KeyHandle:
    """A signing key that lives in the token; only its public half is here."""

    key_id: str
    """Hex of the key's CKA_ID (16 random bytes for keys made here)."""
    key_type: KeyType
    public_key_der: bytes
    """SubjectPublicKeyInfo, DER."""
    label: str = ""
    """The key's CKA_LABEL: what it was made for. The token keeps it, so a
    caller can check a key's purpose against the HSM, not a database."""
