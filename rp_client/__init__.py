"""A small relying-application client for the Sigil HTTP API.

The demo, the tests and the benchmarks use it to play the relying app; it
speaks only HTTP and imports nothing of the server.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

__all__ = ["ApiFailure", "RelyingPartyClient"]


@dataclass(frozen=True)
class ApiFailure(Exception):
    """The server answered with an error body."""

    status: int
    error: str
    description: str

    def __str__(self) -> str:
        return f"{self.status} {self.error}: {self.description}"


@dataclass
class RelyingPartyClient:
    base_url: str
    api_key: str = field(repr=False)
    session: aiohttp.ClientSession

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    async def call(
        self, method: str, path: str, body: Any | None = None
    ) -> tuple[int, Any]:
        """One call; returns the status and the parsed JSON answer."""
        async with self.session.request(
            method, self.base_url + path, json=body, headers=self._headers
        ) as response:
            return response.status, await response.json(content_type=None)

    async def _ok(self, method: str, path: str, body: Any | None = None) -> Any:
        status, answer = await self.call(method, path, body)
        if status >= 400:
            raise ApiFailure(
                status,
                str(answer.get("error", "")),
                str(answer.get("error_description", "")),
            )
        return answer

    async def create_user(
        self,
        display_name: str,
        *,
        user_id: str | None = None,
        key_algorithm: str = "EC-P256",
        second_factor: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "display_name": display_name,
            "key_algorithm": key_algorithm,
        }
        if user_id is not None:
            body["user_id"] = user_id
        if second_factor is not None:
            body["second_factor"] = second_factor
        result: dict[str, Any] = await self._ok("POST", "/api/v1/users", body)
        return result

    async def activation_code(self, user_id: str) -> str:
        answer = await self._ok("POST", f"/api/v1/users/{user_id}/activation-codes")
        return str(answer["activation_code"])

    async def request_signature(
        self,
        *,
        hashes: list[bytes],
        display_text: str,
        user_id: str | None = None,
        credential_id: str | None = None,
        hash_algorithm: str = "SHA-256",
        idempotency_key: str | None = None,
        ttl_seconds: int | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "hash_algorithm": hash_algorithm,
            "hashes": [base64.b64encode(h).decode("ascii") for h in hashes],
            "display_text": display_text,
        }
        if user_id is not None:
            body["user_id"] = user_id
        if credential_id is not None:
            body["credential_id"] = credential_id
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        result: dict[str, Any] = await self._ok(
            "POST", "/api/v1/signature-requests", body
        )
        return result

    async def get(self, request_id: str, *, wait: float = 0) -> dict[str, Any]:
        result: dict[str, Any] = await self._ok(
            "GET", f"/api/v1/signature-requests/{request_id}?wait={wait:g}"
        )
        return result

    async def wait_final(
        self, request_id: str, *, timeout: float = 30
    ) -> dict[str, Any]:
        """Long-poll until the request is final or ``timeout`` runs out."""
        remaining = timeout
        deadline = time.monotonic() + timeout
        while True:
            answer = await self.get(request_id, wait=min(remaining, 30))
            if answer["state"] not in ("pending", "approved"):
                return answer
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return answer

    async def cancel(self, request_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._ok(
            "POST", f"/api/v1/signature-requests/{request_id}/cancel"
        )
        return result

    async def ca_certificate(self) -> bytes:
        answer = await self._ok("GET", "/api/v1/ca")
        return base64.b64decode(answer["certificate"])
