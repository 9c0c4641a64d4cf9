"""Sign PDFs with pyHanko through Sigil's CSC API, approved on the phone.

pyHanko's ``CSCSigner`` calls ``credentials/info`` and
``signatures/signHash`` itself and leaves ``credentials/authorize`` to an
authorisation manager. Sigil's authorisation is asynchronous: the signer
approves on the phone, so ``credentials/authorize`` answers 202 with a
``handle`` and a ``verificationCode`` and ``credentials/authorizeCheck``
answers 202 until the phone has decided, then 200 with the SAD.
:class:`PhoneApproval` does exactly that, with the hashes of the batch
(Sigil is SCAL 2): it shows the verification code (``show_code``) and
polls until the signer decided, within ``timeout`` seconds.

pyHanko is optional for ``rp_client``: ``import rp_client`` never loads
it; this module needs it (``pip install 'sigil-signing[pdf]'``).

    async with aiohttp.ClientSession() as session:
        token = await access_token(session, url, "portal", api_key)
        signer = await csc_signer(session, url, credential_id, token,
                                  show_code=lambda handle, code: print(code))
        signed = await async_sign_pdf(writer, metadata, signer=signer)
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote_plus

import aiohttp

try:
    from pyhanko.sign.general import SigningError
    from pyhanko.sign.signers.csc_signer import (
        CSCAuthorizationInfo,
        CSCAuthorizationManager,
        CSCCredentialInfo,
        CSCServiceSessionInfo,
        CSCSigner,
        fetch_certs_in_csc_credential,
    )
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "rp_client.pyhanko_csc needs pyHanko: pip install 'sigil-signing[pdf]'"
    ) from e

__all__ = [
    "CscRefused",
    "PhoneApproval",
    "ShowCode",
    "SigilCSCSigner",
    "access_token",
    "csc_signer",
]

#: Called with the ``handle`` and the ``verificationCode`` of each
#: authorisation: show the code to the signer, who picks it on the phone.
ShowCode = Callable[[str, str], Awaitable[None] | None]

# Digest size -> OID, for v2's hashAlgorithmOID (the hashes come without it).
_DIGEST_OIDS = {
    32: "2.16.840.1.101.3.4.2.1",  # SHA-256
    48: "2.16.840.1.101.3.4.2.2",  # SHA-384
    64: "2.16.840.1.101.3.4.2.3",  # SHA-512
}


class CscRefused(SigningError):
    """The server refused a CSC call: its HTTP status and CSC error."""

    def __init__(self, method: str, status: int, error: str, description: str):
        super().__init__(f"{method}: {status} {error}: {description}")
        self.method = method
        self.status = status
        self.error = error
        self.description = description


async def access_token(
    session: aiohttp.ClientSession,
    base_url: str,
    client_id: str,
    api_key: str,
    *,
    scope: str = "service credential",
) -> str:
    """An OAuth 2.0 access token by client credentials (``/oauth2/token``,
    HTTP Basic with the client id and the API key as its secret)."""
    # RFC 6749, 2.3.1: each form-encoded, then joined by ":".
    pair = f"{quote_plus(client_id)}:{quote_plus(api_key)}"
    basic = base64.b64encode(pair.encode()).decode("ascii")
    async with session.post(
        f"{base_url}/oauth2/token",
        data={"grant_type": "client_credentials", "scope": scope},
        headers={"Authorization": f"Basic {basic}"},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as response:
        answer = await response.json(content_type=None)
    if response.status != 200 or not isinstance(answer, dict):
        error = answer.get("error", "") if isinstance(answer, dict) else ""
        raise CscRefused("oauth2/token", response.status, str(error), str(answer))
    return str(answer["access_token"])


class PhoneApproval(CSCAuthorizationManager):
    """pyHanko's authorisation manager for Sigil: one phone approval per
    batch of hashes.

    ``authorize_signature`` (pyHanko calls it in ``CSCSigner.commit`` with
    every hash of the batch) calls ``credentials/authorize`` with the hashes,
    hands the verification code to ``show_code``, then polls
    ``credentials/authorizeCheck`` every ``poll_interval`` seconds until the
    signer decided or ``timeout`` seconds passed. A refusal, a rejection on
    the phone or the timeout raise :class:`CscRefused` or ``SigningError``.
    On ``api_ver="v2"`` it sends v2's names (``hashes``,
    ``hashAlgorithmOID``, ``authData``); on v1, v1.0.4's (``hash``, ``PIN``,
    ``OTP``).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        session_info: CSCServiceSessionInfo,
        credential_info: CSCCredentialInfo,
        *,
        show_code: ShowCode,
        description: str | None = None,
        pin: str | None = None,
        otp: str | None = None,
        poll_interval: float = 0.5,
        timeout: float = 300.0,
    ) -> None:
        super().__init__(session_info, credential_info)
        self.session = session
        self.show_code = show_code
        self.description = description
        self.pin = pin
        self.otp = otp
        self.poll_interval = poll_interval
        self.timeout = timeout

    @property
    def api_ver(self) -> str:
        return str(self.csc_session_info.api_ver)

    def authorize_body(self, hash_b64s: list[str]) -> dict[str, Any]:
        """The ``credentials/authorize`` body for these hashes."""
        body: dict[str, Any] = self.format_csc_auth_request(
            num_signatures=len(hash_b64s),
            pin=self.pin,
            otp=self.otp,
            hash_b64s=list(hash_b64s),
            description=self.description,
        )
        if self.api_ver != "v1":
            body["hashes"] = body.pop("hash")
            oid = _DIGEST_OIDS.get(len(base64.b64decode(hash_b64s[0])))
            if oid is not None:
                body["hashAlgorithmOID"] = oid
            factors = [
                {"id": name, "value": body.pop(name)}
                for name in ("PIN", "OTP")
                if name in body
            ]
            if factors:
                body["authData"] = factors
        return body

    async def call(self, method: str, body: dict[str, Any]) -> tuple[int, Any]:
        """POST a CSC method; a 4xx or 5xx answer raises :class:`CscRefused`."""
        try:
            async with self.session.post(
                # pyHanko's URL layout: {service_url}/csc/{api_ver}/{method}
                self.csc_session_info.endpoint_url(method),  # type: ignore[no-untyped-call]
                headers=self.auth_headers,
                json=body,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as response:
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, ValueError, TimeoutError) as e:
            raise SigningError(f"{method} failed: {e!r}") from e
        if response.status >= 400 or not isinstance(answer, dict):
            fields = answer if isinstance(answer, dict) else {}
            raise CscRefused(
                method,
                response.status,
                str(fields.get("error", "")),
                str(fields.get("error_description", answer)),
            )
        return response.status, answer

    async def authorize_signature(self, hash_b64s: list[str]) -> CSCAuthorizationInfo:
        deadline = time.monotonic() + self.timeout
        status, answer = await self.call(
            "credentials/authorize", self.authorize_body(hash_b64s)
        )
        if status == 202:
            handle = str(answer["handle"])
            shown = self.show_code(handle, str(answer["verificationCode"]))
            if inspect.isawaitable(shown):
                await shown
            while status == 202:  # the signer has not decided yet
                if time.monotonic() >= deadline:
                    raise SigningError(
                        f"the signer did not decide within {self.timeout:g} s"
                    )
                await asyncio.sleep(self.poll_interval)
                status, answer = await self.call(
                    "credentials/authorizeCheck", {"handle": handle}
                )
        return self.parse_csc_auth_response(answer)


class SigilCSCSigner(CSCSigner):
    """pyHanko's ``CSCSigner``, sending v2's field names on ``/csc/v2``.

    pyHanko formats ``signatures/signHash`` in v1.0.4's names whatever the
    path; Sigil accepts those on both paths, but a v2 body says
    ``hashes`` and ``hashAlgorithmOID``.
    """

    async def format_csc_signing_req(
        self, tbs_hashes: list[str], digest_algorithm: str
    ) -> dict[str, Any]:
        request: dict[str, Any] = await super().format_csc_signing_req(
            tbs_hashes, digest_algorithm
        )
        if self.auth_manager.csc_session_info.api_ver != "v1":
            request["hashes"] = request.pop("hash")
            request["hashAlgorithmOID"] = request.pop("hashAlgo")
        return request


async def csc_signer(
    session: aiohttp.ClientSession,
    base_url: str,
    credential_id: str,
    token: str,
    *,
    show_code: ShowCode,
    api_ver: str = "v1",
    batch_size: int = 1,
    batch_autocommit: bool = True,
    prefer_pss: bool = False,
    description: str | None = None,
    pin: str | None = None,
    otp: str | None = None,
    poll_interval: float = 0.5,
    timeout: float = 300.0,
) -> SigilCSCSigner:
    """A pyHanko signer for one credential: reads its certificates
    (``credentials/info``) and signs ``batch_size`` documents per phone
    approval (pyHanko commits a batch when it is full, or, without
    ``batch_autocommit``, at ``await signer.commit()``). ``base_url`` is
    the server's, before ``/csc/``."""
    session_info = CSCServiceSessionInfo(
        service_url=base_url.rstrip("/"),
        credential_id=credential_id,
        oauth_token=token,
        api_ver=api_ver,
    )
    credential_info = await fetch_certs_in_csc_credential(session, session_info)
    manager = PhoneApproval(
        session,
        session_info,
        credential_info,
        show_code=show_code,
        description=description,
        pin=pin,
        otp=otp,
        poll_interval=poll_interval,
        timeout=timeout,
    )
    return SigilCSCSigner(
        session,
        manager,
        batch_size=batch_size,
        batch_autocommit=batch_autocommit,
        prefer_pss=prefer_pss,
        sign_timeout=int(timeout),
    )
