"""A small CSC API client for the tests: calls, and the phone approval as
the asynchronous authorisation (authorize, then authorizeCheck until 200)."""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class CscClient:
    base_url: str
    token: str = field(repr=False)
    session: aiohttp.ClientSession
    version: int = 2

    async def call(self, method: str, body: Any) -> tuple[int, Any]:
        async with self.session.post(
            f"{self.base_url}/csc/v{self.version}/{method}",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
        ) as response:
            return response.status, await response.json(content_type=None)

    async def ok(self, method: str, body: Any) -> Any:
        status, answer = await self.call(method, body)
        assert status == 200, (method, status, answer)
        return answer

    async def start(
        self, credential_id: str, hashes: list[bytes], **extra: Any
    ) -> dict[str, Any]:
        """credentials/authorize: 202 with a handle and a verification code."""
        names = ("hashes", "hashAlgorithmOID") if self.version == 2 else ("hash",)
        body: dict[str, Any] = {
            "credentialID": credential_id,
            "numSignatures": len(hashes),
            names[0]: [base64.b64encode(h).decode() for h in hashes],
            **extra,
        }
        if self.version == 2:
            body.setdefault("hashAlgorithmOID", "2.16.840.1.101.3.4.2.1")
        status, answer = await self.call("credentials/authorize", body)
        assert status == 202, (status, answer)
        return dict(answer)

    async def finish(self, handle: str, timeout: float = 20) -> tuple[int, Any]:
        """Poll credentials/authorizeCheck until the signer has decided."""
        deadline = time.monotonic() + timeout
        while True:
            status, answer = await self.call(
                "credentials/authorizeCheck", {"handle": handle}
            )
            if status != 202 or time.monotonic() > deadline:
                return status, answer
            await asyncio.sleep(0.05)

    async def sign(
        self,
        credential_id: str,
        sad: str,
        hashes: list[bytes],
        sign_algo: str = "1.2.840.10045.4.3.2",
        **extra: Any,
    ) -> tuple[int, Any]:
        name = "hashes" if self.version == 2 else "hash"
        return await self.call(
            "signatures/signHash",
            {
                "credentialID": credential_id,
                "SAD": sad,
                name: [base64.b64encode(h).decode() for h in hashes],
                "signAlgo": sign_algo,
                **extra,
            },
        )
