"""Verification codes that tie what the relying app shows to the phone.

The code is derived from the request (its id, nonce and hashes) so that the
user can check that the phone shows the very request they started. The phone
offers the right code among decoys; picking a wrong one ends the request.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["code_choices", "verification_code"]

_DIGITS = 4
_MODULUS = 10**_DIGITS


def _code(material: bytes) -> str:
    value = int.from_bytes(hashlib.sha256(material).digest()[:4], "big")
    return f"{value % _MODULUS:0{_DIGITS}d}"


def verification_code(*, request_id: str, nonce: str, hashes: Sequence[str]) -> str:
    """The four-digit code shown to the user by the relying application."""
    material = "\n".join(["vc", request_id, nonce, *hashes]).encode()
    return _code(material)


def code_choices(*, right: str, nonce: str, count: int = 3) -> tuple[str, ...]:
    """``count`` distinct codes, the right one among them, in a stable order.

    The decoys and their order depend on the request's nonce only, so every
    fetch of the same request shows the same choices.
    """
    codes = [right]
    counter = 0
    while len(codes) < count:
        candidate = _code(f"decoy\n{nonce}\n{counter}".encode())
        counter += 1
        if candidate not in codes:
            codes.append(candidate)
    return tuple(
        sorted(
            codes,
            key=lambda c: hmac.digest(nonce.encode(), c.encode(), "sha256"),
        )
    )
