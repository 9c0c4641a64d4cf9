"""A running server over real HTTP on loopback, on the session's SoftHSM2
token and a fresh SQLite store, with relying apps and simulated phones."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from hsm import Hsm
from mobile_stub import Policy, SimulatedPhone
from rp_client import RelyingPartyClient
from sam.checkpoint import ensure_audit_key
from server.app import Parts, create_app
from server.auth import api_key_hash, new_api_key
from server.ca import ensure_ca
from server.config import Settings
from server.enrolment import issue_activation_code
from server.service import Service
from server.state import SERVICE
from store import Client, Store
from tests.conftest_store import Backend, open_backend


@dataclass
class Sigil:
    """One server under test and the ways to reach it."""

    url: str
    settings: Settings
    store: Store
    hsm: Hsm
    server: TestServer
    session: aiohttp.ClientSession
    rp: RelyingPartyClient

    @property
    def service(self) -> Service:
        return self.server.app[SERVICE]

    async def ask(self, user: Enrolled, text: str = "Sign?") -> dict[str, Any]:
        """The portal asks ``user`` to sign one SHA-256 hash."""
        return await self.rp.request_signature(
            user_id=user.user_id, hashes=[sha256(b"x")], display_text=text
        )

    async def operator_code(self, user_id: str) -> str:
        """An activation code as the operator issues it (``sigil user code``)."""
        issued = await issue_activation_code(
            self.store, user_id, ttl=self.settings.activation_code_ttl, client=None
        )
        return issued.code

    async def new_client(self, name: str) -> RelyingPartyClient:
        key = new_api_key()
        await self.store.add_client(
            Client(
                client_id=str(uuid.uuid4()),
                name=name,
                api_key_hash=api_key_hash(key),
                created_at=datetime.now(UTC),
            )
        )
        return RelyingPartyClient(self.url, key, self.session)


@dataclass
class Enrolled:
    """A user with one enrolled simulated phone."""

    user_id: str
    credential_id: str
    phone: SimulatedPhone


def make_settings(home: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": home,
        "store": str(home / "sigil.db"),
        "vapid_key_file": home / "vapid.pem",
        "hsm_pin": "not-used-by-tests",
        "push_timeout": 5.0,
        "allow_http_push": True,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """Override in a test module to change the server's settings."""
    return {}


@pytest.fixture
def store_backend() -> Backend:
    """The server's store. A module that runs on every backend overrides it
    with ``params=BACKENDS`` and ``resolve_backend`` (tests/conftest_store.py)."""
    return Backend("sqlite")


@pytest.fixture
async def sigil(
    tmp_path: Path,
    hsm: Hsm,
    settings_overrides: dict[str, object],
    store_backend: Backend,
) -> AsyncIterator[Sigil]:
    settings = make_settings(tmp_path, **settings_overrides)
    async with (
        open_backend(store_backend, tmp_path) as store,
        serve(settings, store, hsm) as running,
    ):
        yield running


@asynccontextmanager
async def serve(settings: Settings, store: Store, hsm: Hsm) -> AsyncIterator[Sigil]:
    await ensure_ca(hsm, store, common_name="Sigil Test CA")
    await ensure_audit_key(hsm, store)
    app = create_app(settings, Parts(store=store, hsm=hsm))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        key = new_api_key()
        await store.add_client(
            Client(
                client_id="portal",
                name="Document Portal",
                api_key_hash=api_key_hash(key),
                created_at=datetime.now(UTC),
            )
        )
        rp = RelyingPartyClient(url, key, session)
        try:
            yield Sigil(url, settings, store, hsm, server, session, rp)
        finally:
            await server.close()


EnrolFactory = Callable[..., Awaitable[Enrolled]]


@pytest.fixture
async def enrol(sigil: Sigil) -> AsyncIterator[EnrolFactory]:
    """Make a user and enrol a simulated phone for them."""
    phones: list[SimulatedPhone] = []

    async def factory(
        *,
        policy: Policy = Policy.APPROVE,
        key_algorithm: str = "EC-P256",
        user_id: str | None = None,
        second_factor: str | None = None,
        pin: str | None = None,
    ) -> Enrolled:
        user = await sigil.rp.create_user(
            "Alice Example",
            user_id=user_id,
            key_algorithm=key_algorithm,
            second_factor=second_factor,
        )
        code = await sigil.rp.activation_code(user["user_id"])
        phone = SimulatedPhone(
            sigil.url,
            policy=policy,
            expected_code=lambda rid: expected.get(rid),
            pin=pin,
        )
        await phone.__aenter__()
        phones.append(phone)
        enrolment = await phone.enrol(code)
        return Enrolled(user["user_id"], enrolment.credential_id, phone)

    expected: dict[str, str] = {}
    factory.expected = expected  # type: ignore[attr-defined]
    try:
        yield factory
    finally:
        for phone in phones:
            await phone.__aexit__(None, None, None)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
