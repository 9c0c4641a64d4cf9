"""A simulated phone for tests, demos and benchmarks.

It speaks the device API of docs/api.md over HTTP only (client.py: Device
JWS, SAD), receives challenges as Web Push on its own loopback endpoint
(push.py: RFC 8030, 8291, 8292) and plays a user who approves, rejects,
picks a wrong code or stays silent. Nothing here imports the server.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import aiohttp
import pyotp
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ._b64 import b64decode, b64url_decode
from ._state import PhoneState
from .client import DeviceClient, sad_digest
from .device_key import DeviceKey
from .errors import (
    EnrolmentError,
    MalformedResponseError,
    NotEnrolledError,
    PhoneError,
    StateFileError,
)
from .models import Decision, Enrolment, ExpectedCode, Policy, ShownRequest
from .push import PushReceiver, ReceivedPush

__all__ = ["SimulatedPhone"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_NEEDS_EXPECTED_CODE: Final = frozenset({Policy.APPROVE, Policy.WRONG_CODE})

#: What an approval may have to carry besides the SAD (AUTH-3).
_SECOND_FACTORS: Final = frozenset({"none", "pin", "totp"})


def _totp_from_uri(uri: Any) -> pyotp.TOTP:
    """The TOTP of an ``otpauth://totp/`` URI; raises ValueError otherwise."""
    if not isinstance(uri, str) or not uri.startswith("otpauth://totp/"):
        raise ValueError("not an otpauth TOTP URI")
    try:
        parsed = pyotp.parse_uri(uri)
        parsed.byte_secret()
    except (ValueError, TypeError):
        raise ValueError("the otpauth URI does not parse") from None
    if not isinstance(parsed, pyotp.TOTP):
        raise ValueError("not an otpauth TOTP URI")
    return parsed


@dataclass(frozen=True)
class _Details:
    """The request details the phone needs, checked for shape."""

    request_id: str
    credential_id: str
    hash_algorithm: str
    hashes: tuple[str, ...]
    display_text: str
    nonce: str
    codes: tuple[str, ...]
    relying_party: str
    state: str
    second_factor: str

    @classmethod
    def parse(cls, request_id: str, body: Any) -> _Details:
        if not isinstance(body, dict):
            raise MalformedResponseError("request details are not a JSON object")

        def text(name: str) -> str:
            value = body.get(name)
            if not isinstance(value, str):
                raise MalformedResponseError(f"request details lack {name}")
            return value

        def texts(name: str) -> tuple[str, ...]:
            value = body.get(name)
            if not isinstance(value, list) or not all(
                isinstance(item, str) for item in value
            ):
                raise MalformedResponseError(f"request details lack {name}")
            return tuple(value)

        if text("request_id") != request_id:
            raise MalformedResponseError("request details name another request")
        codes = texts("verification_codes")
        if len(codes) != 3:
            raise MalformedResponseError("request details lack three codes")
        # Servers without second factors leave the field out.
        factor = body.get("second_factor", "none")
        if factor not in _SECOND_FACTORS:
            raise MalformedResponseError("request details name an unknown factor")
        return cls(
            request_id=request_id,
            credential_id=text("credential_id"),
            hash_algorithm=text("hash_algorithm"),
            hashes=texts("hashes"),
            display_text=text("display_text"),
            nonce=text("nonce"),
            codes=codes,
            relying_party=text("relying_party"),
            state=text("state"),
            second_factor=factor,
        )


class SimulatedPhone(DeviceClient):
    """A phone with a device key, a push subscription and a simulated user.

    Use it as ``async with``: that opens the HTTP session (unless one is
    given) and starts the push endpoint on 127.0.0.1. ``expected_code`` plays
    the user reading the code off the relying app; APPROVE and WRONG_CODE
    need it. ``pin`` is the signer's PIN, sent at enrolment and with every
    approval whose request asks for it; a TOTP secret provisioned at
    enrolment makes a fresh code for approvals that ask for one.
    """

    def __init__(
        self,
        server_url: str,
        *,
        policy: Policy = Policy.APPROVE,
        name: str = "simulated phone",
        expected_code: ExpectedCode | None = None,
        session: aiohttp.ClientSession | None = None,
        push_port: int = 0,
        on_shown: Callable[[ShownRequest], None] | None = None,
        pin: str | None = None,
    ) -> None:
        if policy in _NEEDS_EXPECTED_CODE and expected_code is None:
            raise ValueError(
                f"policy {policy} needs expected_code: the simulated user reads "
                "the verification code off the relying app's screen"
            )
        super().__init__(server_url, session=session)
        self.name = name
        self._policy = policy
        self._expected_code = expected_code
        self.on_shown = on_shown
        self._push = PushReceiver(on_push=self._on_push, port=push_port)
        self._vapid_public_key: str | None = None
        self.enrolment: Enrolment | None = None
        #: Every push the endpoint accepted, in arrival order.
        self.pushes: list[ReceivedPush] = []
        #: Every request the phone displayed, in order.
        self.shown: list[ShownRequest] = []
        self._shown_by_id: dict[str, ShownRequest] = {}
        self._claimed: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._pin = pin
        self._totp: pyotp.TOTP | None = None
        # The last TOTP step a code was sent for: the server takes each once.
        self._last_otp_step: int | None = None

    def __repr__(self) -> str:
        return (
            f"SimulatedPhone(name={self.name!r}, device_id={self.device_id!r}, "
            f"policy={self._policy!s})"
        )

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        try:
            await self._push.start()
        except BaseException:
            await self._close_session()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._push.stop()
        await super().__aexit__(exc_type, exc, tb)

    @property
    def vapid_public_key(self) -> str | None:
        """The base64url VAPID key pushes must be signed with, once known."""
        return self._vapid_public_key

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        if policy in _NEEDS_EXPECTED_CODE and self._expected_code is None:
            raise ValueError(f"policy {policy} needs expected_code")
        self._policy = policy

    @property
    def pin(self) -> str | None:
        """The PIN the simulated user types (never logged or shown)."""
        return self._pin

    @pin.setter
    def pin(self, pin: str | None) -> None:
        self._pin = pin

    @property
    def has_totp(self) -> bool:
        """Whether the server provisioned a TOTP secret at enrolment."""
        return self._totp is not None

    async def fresh_otp(self) -> str:
        """A TOTP code of a time step not used before by this phone.

        The server accepts each step once, so a second approval within the
        same 30 s waits for the next step, as a user would wait for a new
        code.
        """
        totp = self._totp
        if totp is None:
            raise NotEnrolledError("no TOTP secret: the server provisioned none")
        while True:
            now = datetime.now(UTC)
            step = totp.timecode(now)
            if self._last_otp_step is None or step > self._last_otp_step:
                self._last_otp_step = step
                return totp.generate_otp(step)
            await asyncio.sleep(totp.interval - now.timestamp() % totp.interval + 0.05)

    def trust_server(
        self, vapid_public_key: str, *, audience: str | None = None
    ) -> None:
        """Take the server parameters an enrolment challenge would give.

        ``vapid_public_key`` is the base64url uncompressed P-256 point pushes
        must be signed with; ``audience`` goes into every SAD's ``aud``.
        """
        raw = b64url_decode(vapid_public_key)
        # Raises ValueError when the bytes are not a point on P-256.
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        self._vapid_public_key = vapid_public_key
        self._push.trusted_vapid_key = raw
        if audience is not None:
            self._audience = audience

    # -- push endpoint -------------------------------------------------------------

    @property
    def push_endpoint(self) -> str:
        return self._push.endpoint

    @property
    def subscription(self) -> dict[str, Any]:
        """The Web Push subscription this phone registers at enrolment."""
        return self._push.subscription()

    @property
    def push_status(self) -> int:
        """The status the push endpoint answers; 201 accepts pushes."""
        return self._push.status

    @push_status.setter
    def push_status(self, status: int) -> None:
        self._push.status = status

    @property
    def push_retry_after(self) -> int | None:
        return self._push.retry_after

    @push_retry_after.setter
    def push_retry_after(self, seconds: int | None) -> None:
        self._push.retry_after = seconds

    @property
    def push_attempts(self) -> int:
        """How many POSTs reached the endpoint, accepted or refused."""
        return self._push.attempts

    # -- enrolment -----------------------------------------------------------------

    async def enrol(self, activation_code: str) -> Enrolment:
        """Fetch a challenge, then register key and subscription with it."""
        if not self._push.running:
            raise RuntimeError("enrol inside 'async with': the push endpoint must run")

        url = self.url("/device/v1/enrolment/challenge")
        status, challenge = await self._send("POST", url, b"", {})
        if status != 201 or not isinstance(challenge, dict):
            raise EnrolmentError("enrolment challenge", status, challenge)
        try:
            self.trust_server(
                challenge["vapid_public_key"], audience=challenge["audience"]
            )
            nonce = challenge["challenge"]
        except (KeyError, TypeError, ValueError) as e:
            raise MalformedResponseError("the enrolment challenge is malformed") from e

        payload = {
            "activation_code": activation_code,
            "challenge": nonce,
            "name": self.name,
            "push_subscription": self.subscription,
        }
        if self._pin is not None:
            payload["pin"] = self._pin
        status, body = await self.call(
            "POST", "/device/v1/enrolment", payload, embed_jwk=True
        )
        if status != 201 or not isinstance(body, dict):
            raise EnrolmentError("enrolment", status, body)
        try:
            enrolment = Enrolment(
                device_id=str(body["device_id"]),
                user_id=str(body["user_id"]),
                credential_id=str(body["credential_id"]),
                certificate_der=b64decode(body["certificate"]),
                totp_uri=body.get("totp_uri"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MalformedResponseError("the enrolment answer is malformed") from e
        totp = None
        if enrolment.totp_uri is not None:
            try:
                totp = _totp_from_uri(enrolment.totp_uri)
            except ValueError:
                # The URI holds a secret: it is never put in an error.
                raise MalformedResponseError(
                    "the enrolment answer's totp_uri is malformed"
                ) from None
        # The server must name the device by the thumbprint of its key.
        if enrolment.device_id != self.device_id:
            raise MalformedResponseError(
                "the server's device_id is not the key's RFC 7638 thumbprint"
            )
        self.enrolment = enrolment
        self._totp = totp
        self._last_otp_step = None
        logger.info(
            "enrolled device %s for user %s", enrolment.device_id, enrolment.user_id
        )
        return enrolment

    # -- handling requests ---------------------------------------------------------

    def _notify(self) -> None:
        # Waiters hold the old event; a fresh one serves the next change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_push(self, push: ReceivedPush) -> None:
        self.pushes.append(push)
        self._notify()
        message = push.message
        rid = message.get("rid") if isinstance(message, dict) else None
        nonce = message.get("nonce") if isinstance(message, dict) else None
        if not isinstance(rid, str) or not isinstance(nonce, str):
            logger.warning("push message lacks rid or nonce; ignored")
            return
        if self.enrolment is None:
            logger.debug("push for %s recorded; the phone is not enrolled", rid)
            return
        self._spawn(self._answer_push(rid, nonce))

    async def _answer_push(self, request_id: str, nonce: str) -> None:
        try:
            await self._claim_and_handle(request_id, nonce)
        except (PhoneError, aiohttp.ClientError, TimeoutError) as e:
            logger.warning("could not handle request %s: %s", request_id, e)
        except Exception:
            logger.exception("unexpected error handling request %s", request_id)

    async def _claim_and_handle(
        self, request_id: str, pushed_nonce: str | None
    ) -> ShownRequest | None:
        if request_id in self._claimed:
            logger.debug("request %s already handled or in hand", request_id)
            return None
        self._claimed.add(request_id)
        shown = None
        try:
            shown = await self._handle(request_id, pushed_nonce)
        finally:
            if shown is None:
                # Not displayed: a later push or poll may try again.
                self._claimed.discard(request_id)
        return shown

    async def _handle(
        self, request_id: str, pushed_nonce: str | None
    ) -> ShownRequest | None:
        details = await self.fetch(request_id)
        view = _Details.parse(request_id, details)

        if pushed_nonce is not None and not hmac.compare_digest(
            view.nonce.encode(), pushed_nonce.encode()
        ):
            logger.warning(
                "request %s: the pushed nonce does not match; ignored", request_id
            )
            return None
        if view.state != "pending":
            logger.info("request %s is %s; nothing to answer", request_id, view.state)
            return None

        logger.info(
            "showing request %s from %s: %r, codes %s",
            request_id,
            view.relying_party,
            view.display_text,
            " ".join(view.codes),
        )
        decision, picked = await self._decide(view)
        outcome = None
        if decision is not None:
            sad = self.make_sad(details, decision=decision, vc=picked)
            logger.debug(
                "request %s: %s with SAD %s", request_id, decision, sad_digest(sad)
            )
            if decision == "approve":
                outcome = await self.approve(
                    request_id, sad, **await self._second_factor(view)
                )
            else:
                outcome = await self.reject(request_id, sad)
            logger.info("request %s: %s answered %s", request_id, decision, outcome[0])

        shown = ShownRequest(
            request_id=request_id,
            relying_party=view.relying_party,
            display_text=view.display_text,
            codes=view.codes,
            picked=picked,
            hashes=view.hashes,
            hash_algorithm=view.hash_algorithm,
            credential_id=view.credential_id,
            decision=decision,
            outcome=outcome,
            second_factor=view.second_factor,
        )
        self._record(shown)
        return shown

    async def _second_factor(self, view: _Details) -> dict[str, str]:
        """The PIN or one-time code the request asks for, as approve()'s
        keyword arguments; empty when the phone has none to give."""
        if view.second_factor == "pin":
            if self._pin is not None:
                return {"pin": self._pin}
            logger.warning("request %s asks for a PIN; none given", view.request_id)
        elif view.second_factor == "totp":
            if self._totp is not None:
                return {"otp": await self.fresh_otp()}
            logger.warning(
                "request %s asks for a one-time code; no TOTP secret",
                view.request_id,
            )
        return {}

    async def _expected(self, request_id: str) -> str | None:
        if self._expected_code is None:
            return None
        code = self._expected_code(request_id)
        if isinstance(code, Awaitable):
            return await code
        return code

    async def _decide(self, view: _Details) -> tuple[Decision | None, str | None]:
        """Play the user: returns the decision and the code picked."""
        if self._policy is Policy.SILENT:
            return None, None

        expected = await self._expected(view.request_id)
        # A reject carries the code the relying app showed, else the first one.
        fallback = expected if expected in view.codes else view.codes[0]
        if self._policy is Policy.REJECT:
            return "reject", fallback

        if expected is None:
            logger.warning(
                "request %s: no code from the relying app; rejecting", view.request_id
            )
            return "reject", fallback
        if self._policy is Policy.WRONG_CODE:
            wrong = [code for code in view.codes if code != expected]
            return "approve", wrong[0]
        if expected not in view.codes:
            # What a careful user does when the codes do not match.
            logger.warning(
                "request %s: the relying app's code is not among the phone's; "
                "rejecting",
                view.request_id,
            )
            return "reject", fallback
        return "approve", expected

    def _record(self, shown: ShownRequest) -> None:
        self.shown.append(shown)
        self._shown_by_id[shown.request_id] = shown
        self._notify()
        if self.on_shown is not None:
            try:
                self.on_shown(shown)
            except Exception:
                logger.exception("the on_shown callback failed")

    async def poll_once(self) -> list[ShownRequest]:
        """Handle every pending request not yet shown, as if pushes failed."""
        handled = []
        for request_id in await self.pending_request_ids():
            shown = await self._claim_and_handle(request_id, None)
            if shown is not None:
                handled.append(shown)
        return handled

    # -- waiting -------------------------------------------------------------------

    async def _wait(
        self, ready: Callable[[], _T | None], seconds: float | None, what: str
    ) -> _T:
        try:
            async with asyncio.timeout(seconds):
                while True:
                    result = ready()
                    if result is not None:
                        return result
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"{self.name}: no {what} within {seconds} s") from None

    # The waits take a timeout (None waits forever), not asyncio.timeout(),
    # so that a test reads as one call and a timeout names what was awaited.
    async def wait_for(
        self,
        request_id: str,
        timeout: float | None = 10,
    ) -> ShownRequest:
        """Wait until the phone has shown (and answered) this request."""
        return await self._wait(
            lambda: self._shown_by_id.get(request_id),
            timeout,
            f"request {request_id} shown",
        )

    async def wait_for_count(
        self,
        count: int,
        timeout: float | None = 10,
    ) -> list[ShownRequest]:
        """Wait until the phone has shown at least ``count`` requests."""
        return await self._wait(
            lambda: list(self.shown) if len(self.shown) >= count else None,
            timeout,
            f"{count} requests shown",
        )

    async def wait_for_pushes(
        self,
        count: int = 1,
        timeout: float | None = 10,
    ) -> list[ReceivedPush]:
        """Wait until the endpoint has accepted at least ``count`` pushes."""
        return await self._wait(
            lambda: list(self.pushes) if len(self.pushes) >= count else None,
            timeout,
            f"{count} pushes",
        )

    async def settle(self) -> None:
        """Wait until every push in hand has been handled or dropped."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # -- other phones and persistence ----------------------------------------------

    def clone_with_new_key(
        self,
        *,
        policy: Policy | None = None,
        name: str | None = None,
        expected_code: ExpectedCode | None = None,
    ) -> SimulatedPhone:
        """A second, unenrolled phone trusting the same server parameters."""
        clone = SimulatedPhone(
            self.server_url,
            policy=self._policy if policy is None else policy,
            name=f"{self.name} (2)" if name is None else name,
            expected_code=expected_code or self._expected_code,
            session=self._given_session,
            pin=self._pin,
        )
        clone.audience = self.audience
        if self._vapid_public_key is not None:
            clone.trust_server(self._vapid_public_key)
        return clone

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save keys, subscription and enrolment to a 0600 JSON file."""
        if (
            self.enrolment is None
            or self._audience is None
            or self._vapid_public_key is None
        ):
            raise NotEnrolledError("only an enrolled phone can be saved")
        PhoneState(
            name=self.name,
            device_id=self.device_id,
            user_id=self.enrolment.user_id,
            credential_id=self.enrolment.credential_id,
            certificate_der=self.enrolment.certificate_der,
            audience=self._audience,
            vapid_public_key=self._vapid_public_key,
            push_port=self._push.port,
            push_token=self._push.token,
            device_key_pem=self._key.private_pem(),
            push_key_pem=self._push.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            push_auth_secret=self._push.auth_secret,
            totp_secret=None if self._totp is None else self._totp.secret,
        ).write(path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        server_url: str,
        *,
        policy: Policy = Policy.APPROVE,
        expected_code: ExpectedCode | None = None,
        session: aiohttp.ClientSession | None = None,
        on_shown: Callable[[ShownRequest], None] | None = None,
        pin: str | None = None,
    ) -> SimulatedPhone:
        """A phone from a saved state; it listens on the saved push port."""
        state = PhoneState.read(path)
        phone = cls(
            server_url,
            policy=policy,
            name=state.name,
            expected_code=expected_code,
            session=session,
            on_shown=on_shown,
            pin=pin,
        )
        if state.totp_secret is not None:
            phone._totp = pyotp.TOTP(state.totp_secret)
        try:
            phone._key = DeviceKey.from_pem(state.device_key_pem)
            push_key = serialization.load_pem_private_key(
                state.push_key_pem, password=None
            )
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise StateFileError("state file: a private key is malformed") from e
        if not isinstance(push_key, ec.EllipticCurvePrivateKey):
            raise StateFileError("state file: the push key is not an EC key")
        if phone.device_id != state.device_id:
            raise StateFileError("state file: device_id is not the key's thumbprint")

        phone._push = PushReceiver(
            on_push=phone._on_push,
            port=state.push_port,
            token=state.push_token,
            private_key=push_key,
            auth_secret=state.push_auth_secret,
        )
        try:
            phone.trust_server(state.vapid_public_key, audience=state.audience)
        except ValueError as e:
            raise StateFileError("state file: vapid_public_key is malformed") from e
        phone.enrolment = Enrolment(
            device_id=state.device_id,
            user_id=state.user_id,
            credential_id=state.credential_id,
            certificate_der=state.certificate_der,
        )
        return phone
