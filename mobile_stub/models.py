"""What the simulated phone reports: policies, enrolments, shown requests."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Decision", "Enrolment", "ExpectedCode", "Policy", "ShownRequest"]

Decision = Literal["approve", "reject"]

ExpectedCode = Callable[[str], str | Awaitable[str | None] | None]
"""Plays the user reading the code off the relying app: request id to code."""


class Policy(enum.StrEnum):
    """What the simulated user does with each request the phone shows."""

    APPROVE = "approve"
    REJECT = "reject"
    #: Approve, but pick one of the two codes the relying app did not show.
    WRONG_CODE = "wrong-code"
    #: Receive and fetch, never answer.
    SILENT = "silent"


@dataclass(frozen=True)
class Enrolment:
    """What the server answered to a successful enrolment."""

    device_id: str
    user_id: str
    credential_id: str
    certificate_der: bytes = field(repr=False)
    #: The otpauth:// URI of the signer's TOTP, when their policy asks for
    #: one (AUTH-3); a secret, never shown in a repr or a log.
    totp_uri: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ShownRequest:
    """What the phone displayed for one request and what came of it.

    The phone never knows the right verification code; it shows ``codes``
    and records the one the simulated user ``picked`` (None when silent).
    ``outcome`` is the HTTP status and parsed body of the answer, None when
    the phone did not answer.
    """

    request_id: str
    relying_party: str
    display_text: str
    codes: tuple[str, ...]
    picked: str | None
    hashes: tuple[str, ...]
    hash_algorithm: str
    credential_id: str
    decision: Decision | None
    outcome: tuple[int, Any] | None
    #: What the approval had to carry besides the SAD: "none", "pin" or
    #: "totp".
    second_factor: str = "none"
