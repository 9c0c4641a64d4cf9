"""Errors raised by the simulated phone."""

from __future__ import annotations

from typing import Any

__all__ = [
    "EnrolmentError",
    "MalformedResponseError",
    "NotEnrolledError",
    "PhoneError",
    "ServerResponseError",
    "StateFileError",
]


class PhoneError(Exception):
    """Root of every error the simulated phone raises."""


class NotEnrolledError(PhoneError):
    """The phone lacks the server parameters an operation needs."""


class ServerResponseError(PhoneError):
    """The server answered with a status or body the phone cannot use."""

    def __init__(self, what: str, status: int, body: Any) -> None:
        self.status = status
        # Only the CSC-style error fields are kept: a body may echo input.
        self.error: str | None = None
        self.error_description: str | None = None
        if isinstance(body, dict):
            error = body.get("error")
            description = body.get("error_description")
            self.error = error if isinstance(error, str) else None
            self.error_description = (
                description if isinstance(description, str) else None
            )
        detail = f": {self.error}" if self.error else ""
        if self.error_description:
            detail += f" ({self.error_description})"
        super().__init__(f"{what}: HTTP {status}{detail}")


class MalformedResponseError(PhoneError):
    """A 2xx answer lacks a field the protocol requires, or has the wrong type."""


class EnrolmentError(ServerResponseError):
    """The server refused or garbled the enrolment."""


class StateFileError(PhoneError):
    """A saved phone state file is missing, unreadable or malformed."""
