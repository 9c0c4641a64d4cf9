"""Base64 codecs in the two spellings of docs/api.md."""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["b64decode", "b64encode", "b64url_decode", "b64url_encode"]

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; ValueError when malformed."""
    stripped = text.rstrip("=")
    if not _B64URL.fullmatch(stripped):
        raise ValueError("not valid base64url")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError) as e:
        raise ValueError("not valid base64url") from e


def b64encode(data: bytes) -> str:
    """Standard base64 with padding, the form of hashes and certificates."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Strict standard base64; ValueError when malformed."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError("not valid base64") from e
