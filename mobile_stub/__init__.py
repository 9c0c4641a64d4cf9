"""A simulated phone that enrols, receives Web Push and approves signing.

It plays the user's device in tests, demos and benchmarks, speaking the
device API of docs/api.md over HTTP only. It imports nothing from the
server side (server, sam, hsm, store).
"""

from .client import DEFAULT_SAD_LIFETIME, DeviceClient, sad_digest
from .device_key import DROP, DeviceKey, DropType
from .errors import (
    EnrolmentError,
    MalformedResponseError,
    NotEnrolledError,
    PhoneError,
    ServerResponseError,
    StateFileError,
)
from .models import Decision, Enrolment, ExpectedCode, Policy, ShownRequest
from .phone import SimulatedPhone
from .push import PushReceiver, PushRefused, ReceivedPush, verify_vapid

__all__ = [
    "DEFAULT_SAD_LIFETIME",
    "DROP",
    "Decision",
    "DeviceClient",
    "DeviceKey",
    "DropType",
    "Enrolment",
    "EnrolmentError",
    "ExpectedCode",
    "MalformedResponseError",
    "NotEnrolledError",
    "PhoneError",
    "Policy",
    "PushReceiver",
    "PushRefused",
    "ReceivedPush",
    "ServerResponseError",
    "ShownRequest",
    "SimulatedPhone",
    "StateFileError",
    "sad_digest",
    "verify_vapid",
]
