"""Verification codes that tie what the relying app shows to the phone.

The code is derived from the request (its id, nonce and hashes) under a
server secret, so that the user can check that the phone shows the very
request they started, and so that a phone app cannot work out on its own
which of the codes it offers is the right one: only the user, reading the
relying app's screen, can. Picking a wrong code ends the request.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["code_choices", "verification_code"]

_DIGITS = 4
_MODULUS = 10**_DIGITS


def _code(secret: bytes, material: bytes) -> str:
    value = int.from_bytes(hmac.digest(secret, material, hashlib.sha256)[:4], "big")
    return f"{value % _MODULUS:0{_DIGITS}d}"


def verification_code(
    *, secret: bytes, request_id: str, nonce: str, hashes: Sequence[str]
) -> str:
    """The four-digit code shown to the user by the relying application."""
    material = "\n".join(["vc", request_id, nonce, *hashes]).encode()
    return _code(secret, material)


def code_choices(
    *, secret: bytes, right: str, nonce: str, count: int = 3
) -> tuple[str, ...]:
    """``count`` distinct codes, the right one among them, in a stable order.

    The decoys and the order depend on the nonce under the server secret,
    so every fetch of a request shows the same choices and nothing the phone
    holds tells the right one from the decoys.
    """
    codes = [right]
    counter = 0
    while len(codes) < count:
        candidate = _code(secret, f"decoy\n{nonce}\n{counter}".encode())
        counter += 1
        if candidate not in codes:
            codes.append(candidate)
    return tuple(
        sorted(
            codes,
            key=lambda c: hmac.digest(
                secret, f"order\n{nonce}\n{c}".encode(), "sha256"
            ),
        )
    )
