"""Two `sigil serve` processes on one MongoDB database and one HSM token.

A relying app talks to the first, the phone to the second: the request is
created on one, approved and signed on the other, and a long poll on the
first notices within a bounded time, although nothing but the database
connects the two processes (STATE-2). Real processes, real HTTP on
loopback, real push encryption, SoftHSM2 and the session's MongoDB server.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from devtools.ferretdb import free_port
from mobile_stub import SimulatedPhone
from rp_client import RelyingPartyClient
from tests.conftest_server import sha256

SIGIL = [sys.executable, "-m", "server"]

# A long poll re-reads the store at least once a second when the backend
# cannot push changes (FerretDB has no change streams); allow for a slow VM.
NOTICE_BOUND = 3.0


def _environment(home: Path, mongodb_uri: str, database: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SIGIL_", "SOFTHSM"))
    }
    env.update(
        SIGIL_HOME=str(home),
        MONGODB_URI=mongodb_uri,
        SIGIL_MONGODB_DB=database,
        PYTHONUNBUFFERED="1",
    )
    return env


async def _sigil(env: dict[str, str], *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *SIGIL,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def _serve(env: dict[str, str], port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        *SIGIL,
        "serve",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    seen: list[str] = []
    async with asyncio.timeout(60):
        while True:
            line = (await process.stdout.readline()).decode()
            if not line:
                raise AssertionError("sigil serve stopped:\n" + "".join(seen))
            seen.append(line)
            if "serving on" in line:
                break
    # Keep draining its output so the pipe never fills up.
    asyncio.get_running_loop().create_task(_drain(process))
    return process


async def _drain(process: asyncio.subprocess.Process) -> None:
    assert process.stdout is not None
    while await process.stdout.readline():
        pass


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.fixture
async def two_servers(
    tmp_path: Path, mongodb_server: Any
) -> AsyncIterator[tuple[str, str, str]]:
    """(first url, second url, relying app API key) on one fresh database."""
    database = f"sigil_test_{uuid.uuid4().hex[:12]}"
    env = _environment(tmp_path, mongodb_server.uri, database)
    await _sigil(env, "init")
    key_file = tmp_path / "portal.key"
    await _sigil(
        env, "client", "create", "--name", "Portal", "--key-file", str(key_file)
    )
    api_key = key_file.read_text(encoding="utf-8").strip()

    ports = free_port(), free_port()
    servers = [await _serve(env, port) for port in ports]
    try:
        yield (
            f"http://127.0.0.1:{ports[0]}",
            f"http://127.0.0.1:{ports[1]}",
            api_key,
        )
    finally:
        await asyncio.gather(*(_stop(s) for s in servers))
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_server.uri)
        await client.drop_database(database)
        await client.close()


async def test_request_created_on_one_process_is_signed_through_the_other(
    two_servers: tuple[str, str, str],
) -> None:
    first, second, api_key = two_servers
    async with aiohttp.ClientSession() as session:
        rp = RelyingPartyClient(first, api_key, session)
        user = await rp.create_user("Alice Example", user_id="alice")
        code = await rp.activation_code(user["user_id"])

        expected: dict[str, str] = {}
        approved_at: dict[str, float] = {}

        def shown(view: Any) -> None:
            approved_at[view.request_id] = time.monotonic()

        # The phone knows only the second process; the relying app only the first.
        async with SimulatedPhone(
            second, expected_code=expected.get, on_shown=shown
        ) as phone:
            enrolment = await phone.enrol(code)
            digest = sha256(b"contract signed across two processes")
            created = await rp.request_signature(
                user_id=user["user_id"], hashes=[digest], display_text="Sign?"
            )
            request_id = created["request_id"]
            expected[request_id] = created["verification_code"]

            # Long poll on the first process while the second one signs.
            polling = asyncio.create_task(rp.get(request_id, wait=20))
            await phone.wait_for(request_id)
            result = await polling
            noticed = time.monotonic()

    assert result["state"] == "signed"
    assert result["credential_id"] == enrolment.credential_id
    # The push came from the first process, the approval went to the second.
    assert request_id in {p.message.get("rid") for p in phone.pushes}
    assert noticed - approved_at[request_id] < NOTICE_BOUND

    chain = [
        x509.load_der_x509_certificate(base64.b64decode(c))
        for c in result["certificate_chain"]
    ]
    leaf, ca = chain
    leaf.verify_directly_issued_by(ca)
    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    (signature,) = result["signatures"]
    public_key.verify(
        base64.b64decode(signature),
        digest,
        ec.ECDSA(Prehashed(hashes.SHA256())),
    )
