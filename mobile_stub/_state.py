"""The JSON state file that lets a phone enrol in one process and run in another."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ._b64 import b64decode, b64encode, b64url_decode, b64url_encode
from .errors import StateFileError

__all__ = ["STATE_FORMAT", "PhoneState"]

STATE_FORMAT: Final = "sigil-phone-state/1"
_BASE32: Final = re.compile(r"[A-Z2-7]{16,128}")


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise StateFileError(f"state file: {name} is missing or not text")
    return value


@dataclass(frozen=True)
class PhoneState:
    """Everything a phone must keep to answer on the subscription it registered."""

    name: str
    device_id: str
    user_id: str
    credential_id: str
    certificate_der: bytes = field(repr=False)
    audience: str
    vapid_public_key: str
    push_port: int
    push_token: str = field(repr=False)
    device_key_pem: bytes = field(repr=False)
    push_key_pem: bytes = field(repr=False)
    push_auth_secret: bytes = field(repr=False)
    #: The base32 TOTP secret the server provisioned at enrolment, if any.
    totp_secret: str | None = field(default=None, repr=False)

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "format": STATE_FORMAT,
            "name": self.name,
            "device_id": self.device_id,
            "user_id": self.user_id,
            "credential_id": self.credential_id,
            "certificate": b64encode(self.certificate_der),
            "audience": self.audience,
            "vapid_public_key": self.vapid_public_key,
            "push_port": self.push_port,
            "push_token": self.push_token,
            "device_key": self.device_key_pem.decode("ascii"),
            "push_key": self.push_key_pem.decode("ascii"),
            "push_auth_secret": b64url_encode(self.push_auth_secret),
        }
        if self.totp_secret is not None:
            data["totp_secret"] = self.totp_secret
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> PhoneState:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise StateFileError("state file: not JSON") from e
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise StateFileError(f"state file: format is not {STATE_FORMAT}")

        port = data.get("push_port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise StateFileError("state file: push_port is not a port number")
        try:
            certificate = b64decode(_text(data, "certificate"))
            auth_secret = b64url_decode(_text(data, "push_auth_secret"))
        except ValueError as e:
            raise StateFileError("state file: a binary field is malformed") from e
        totp_secret = data.get("totp_secret")
        if totp_secret is not None and not (
            isinstance(totp_secret, str) and _BASE32.fullmatch(totp_secret)
        ):
            raise StateFileError("state file: totp_secret is not base32 text")
        return cls(
            name=_text(data, "name"),
            device_id=_text(data, "device_id"),
            user_id=_text(data, "user_id"),
            credential_id=_text(data, "credential_id"),
            certificate_der=certificate,
            audience=_text(data, "audience"),
            vapid_public_key=_text(data, "vapid_public_key"),
            push_port=port,
            push_token=_text(data, "push_token"),
            device_key_pem=_text(data, "device_key").encode("ascii"),
            push_key_pem=_text(data, "push_key").encode("ascii"),
            push_auth_secret=auth_secret,
            totp_secret=totp_secret,
        )

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write atomically, readable by the owner only: it holds private keys."""
        target = Path(path)
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as stream:
                    stream.write(self.to_json())
                    stream.flush()
                    os.fsync(stream.fileno())
                os.replace(temporary, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    temporary.unlink()
                raise
        except OSError as e:
            raise StateFileError(f"cannot write the state file {path}: {e}") from e

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> PhoneState:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise StateFileError(f"cannot read the state file {path}") from e
        return cls.from_json(text)
