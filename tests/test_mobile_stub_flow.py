"""The simulated phone end to end against a fake device API on loopback.

The fake below implements the device side of docs/api.md with standard
libraries only (joserfc, pywebpush, py_vapid): it checks every Device JWS and
SAD the phone sends and pushes with real RFC 8291 encryption and VAPID. It is
no stand-in for the server's own tests; it proves the phone keeps the
protocol and that its policies behave.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import stat
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from py_vapid import Vapid02
from pytest_aiohttp import AiohttpServer
from pywebpush import WebPusher

from mobile_stub import (
    EnrolmentError,
    NotEnrolledError,
    Policy,
    ShownRequest,
    SimulatedPhone,
    StateFileError,
)
from mobile_stub._b64 import b64encode, b64url_decode, b64url_encode
from mobile_stub.cli import main

ACTIVATION_CODE = "ACT-7731-2290"
AUDIENCE = "https://sigil.test"
SHA256_OID = "2.16.840.1.101.3.4.2.1"


_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
}


def _json_error(status: int, error: str, description: str) -> web.HTTPException:
    return _ERRORS[status](
        text=json.dumps({"error": error, "error_description": description}),
        content_type="application/json",
    )


@dataclass
class FakeRequest:
    request_id: str
    credential_id: str
    hashes: list[str]
    display_text: str
    nonce: str
    codes: list[str]
    right_code: str
    relying_party: str = "Contract Portal"
    state: str = "pending"

    def details(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "credential_id": self.credential_id,
            "hash_algorithm": SHA256_OID,
            "hashes": self.hashes,
            "display_text": self.display_text,
            "nonce": self.nonce,
            "verification_codes": self.codes,
            "audience": AUDIENCE,
            "relying_party": self.relying_party,
            "created_at": "2025-01-01T00:00:00Z",
            "expires_at": "2025-01-01T00:02:00Z",
            "state": self.state,
        }


@dataclass
class FakeDeviceApi:
    """The device API of docs/api.md, strict where the phone is concerned."""

    vapid: Vapid02 = field(default_factory=Vapid02)
    challenges: set[str] = field(default_factory=set)
    devices: dict[str, ECKey] = field(default_factory=dict)
    subscription: dict[str, Any] | None = None
    requests: dict[str, FakeRequest] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)
    answers: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    raw_sads: list[str] = field(default_factory=list)
    jtis: set[str] = field(default_factory=set)
    url: str = ""

    def __post_init__(self) -> None:
        self.vapid.generate_keys()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/device/v1/enrolment/challenge", self._challenge)
        app.router.add_post("/device/v1/enrolment", self._enrol)
        app.router.add_get("/device/v1/requests", self._list)
        app.router.add_get("/device/v1/requests/{rid}", self._details)
        app.router.add_post("/device/v1/requests/{rid}/{action}", self._answer)
        return app

    # -- Device JWS (AUTH-2) -------------------------------------------------------

    async def _verify_call(
        self, request: web.Request, *, enrolment: bool = False
    ) -> tuple[str, bytes]:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Device" or not token:
            raise _json_error(401, "invalid_token", "no Device JWS")
        header = json.loads(b64url_decode(token.split(".")[0]))
        if enrolment:
            key = ECKey.import_key(header["jwk"])
            device_id = key.thumbprint()
            if "kid" in header:
                raise _json_error(401, "invalid_token", "kid at enrolment")
        else:
            device_id = header.get("kid", "")
            if device_id not in self.devices or "jwk" in header:
                raise _json_error(401, "invalid_token", "unknown device")
            key = self.devices[device_id]
        try:
            verified = jws.deserialize_compact(token, key, ["ES256"])
        except JoseError as e:
            raise _json_error(401, "invalid_token", "bad signature") from e
        claims = json.loads(verified.payload)
        body = await request.read()

        if verified.headers().get("typ") != "dev-call+jwt":
            raise _json_error(401, "invalid_token", "typ")
        if claims["htm"] != request.method or claims["htu"] != request.raw_path:
            raise _json_error(401, "invalid_token", "htm or htu")
        if claims["bh"] != b64url_encode(hashlib.sha256(body).digest()):
            raise _json_error(401, "invalid_token", "bh")
        if abs(claims["iat"] - time.time()) > 60:
            raise _json_error(401, "invalid_token", "iat")
        if claims["jti"] in self.jtis:
            raise _json_error(401, "invalid_token", "jti replayed")
        self.jtis.add(claims["jti"])
        return device_id, body

    # -- handlers ------------------------------------------------------------------

    async def _challenge(self, request: web.Request) -> web.Response:
        challenge = secrets.token_urlsafe(24)
        self.challenges.add(challenge)
        point = self.vapid.public_key.public_bytes(
            serialization.Encoding.X962,
            serialization.PublicFormat.UncompressedPoint,
        )
        return web.json_response(
            {
                "challenge": challenge,
                "expires_in": 300,
                "vapid_public_key": b64url_encode(point),
                "audience": AUDIENCE,
            },
            status=201,
        )

    async def _enrol(self, request: web.Request) -> web.Response:
        device_id, raw = await self._verify_call(request, enrolment=True)
        body = json.loads(raw)
        if body["challenge"] not in self.challenges:
            raise _json_error(400, "invalid_request", "unknown challenge")
        self.challenges.discard(body["challenge"])
        if body["activation_code"] != ACTIVATION_CODE:
            raise _json_error(400, "invalid_grant", "activation code refused")
        header = json.loads(
            b64url_decode(request.headers["Authorization"].split()[1].split(".")[0])
        )
        self.devices[device_id] = ECKey.import_key(header["jwk"])
        self.subscription = body["push_subscription"]
        return web.json_response(
            {
                "device_id": device_id,
                "user_id": "alice",
                "credential_id": "cred-alice-1",
                "certificate": b64encode(b"0\x82fake DER"),
            },
            status=201,
        )

    async def _list(self, request: web.Request) -> web.Response:
        await self._verify_call(request)
        pending = [
            {"request_id": r.request_id, "expires_at": "2025-01-01T00:02:00Z"}
            for r in self.requests.values()
            if r.state == "pending"
        ]
        return web.json_response({"requests": pending})

    def _find(self, request: web.Request) -> FakeRequest:
        found = self.requests.get(request.match_info["rid"])
        if found is None:
            raise _json_error(404, "not_found", "no such request")
        return found

    async def _details(self, request: web.Request) -> web.Response:
        await self._verify_call(request)
        found = self._find(request)
        self.fetched.append(found.request_id)
        return web.json_response(found.details())

    async def _answer(self, request: web.Request) -> web.Response:
        device_id, raw = await self._verify_call(request)
        found = self._find(request)
        action = request.match_info["action"]
        sad = json.loads(raw)["sad"]
        self.raw_sads.append(sad)
        verified = jws.deserialize_compact(sad, self.devices[device_id], ["ES256"])
        header, claims = verified.headers(), json.loads(verified.payload)
        self.answers.append((action, found.request_id, claims))

        expected = {
            "iss": device_id,
            "aud": AUDIENCE,
            "rid": found.request_id,
            "cid": found.credential_id,
            "halg": SHA256_OID,
            "hashes": found.hashes,
            "numSignatures": len(found.hashes),
            "nonce": found.nonce,
            "dth": b64url_encode(hashlib.sha256(found.display_text.encode()).digest()),
            "decision": action,
        }
        if header != {"alg": "ES256", "typ": "sad+jwt", "kid": device_id}:
            raise _json_error(400, "invalid_sad", "header")
        if {name: claims.get(name) for name in expected} != expected:
            raise _json_error(400, "invalid_sad", "claims")
        if not 0 < claims["exp"] - claims["iat"] <= 300:
            raise _json_error(400, "invalid_sad", "lifetime")
        if found.state != "pending":
            raise _json_error(409, "conflict", "already final")
        if action == "approve" and claims.get("vc") != found.right_code:
            raise _json_error(400, "wrong_code", "verification code mismatch")
        found.state = "signed" if action == "approve" else "rejected"
        return web.json_response({"request_id": found.request_id, "state": found.state})

    # -- relying side --------------------------------------------------------------

    def create_request(
        self, *, display_text: str = "Sign contract 42", hashes: int = 2
    ) -> FakeRequest:
        codes = [f"{secrets.randbelow(10_000):04d}" for _ in range(3)]
        while len(set(codes)) < 3:
            codes = [f"{secrets.randbelow(10_000):04d}" for _ in range(3)]
        created = FakeRequest(
            request_id=secrets.token_urlsafe(12),
            credential_id="cred-alice-1",
            hashes=[b64encode(secrets.token_bytes(32)) for _ in range(hashes)],
            display_text=display_text,
            nonce=secrets.token_urlsafe(16),
            codes=codes,
            right_code=codes[secrets.randbelow(3)],
        )
        self.requests[created.request_id] = created
        return created

    async def push(
        self,
        target: FakeRequest,
        session: aiohttp.ClientSession,
        *,
        nonce: str | None = None,
    ) -> int:
        assert self.subscription is not None
        endpoint = self.subscription["endpoint"]
        origin = endpoint.split("/push/", 1)[0]
        headers = self.vapid.sign(
            {
                "sub": "mailto:ops@sigil.test",
                "aud": origin,
                "exp": int(time.time()) + 600,
            }
        )
        headers.update({"Urgency": "high", "Topic": target.request_id[:32]})
        message = {"rid": target.request_id, "nonce": nonce or target.nonce}
        response = await WebPusher(
            self.subscription, aiohttp_session=session
        ).send_async(json.dumps(message).encode(), headers=headers, ttl=90)
        status: int = response.status
        return status


@pytest.fixture
async def api(aiohttp_server: AiohttpServer) -> FakeDeviceApi:
    fake = FakeDeviceApi()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("/")).rstrip("/")
    return fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def _reads_code_from(api: FakeDeviceApi) -> Callable[[str], str | None]:
    return lambda request_id: api.requests[request_id].right_code


@pytest.fixture
async def phone(api: FakeDeviceApi) -> AsyncIterator[SimulatedPhone]:
    async with SimulatedPhone(api.url, expected_code=_reads_code_from(api)) as started:
        await started.enrol(ACTIVATION_CODE)
        yield started


# -- enrolment ---------------------------------------------------------------------


async def test_enrols_with_proof_of_possession_and_registers_its_subscription(
    api: FakeDeviceApi,
) -> None:
    async with SimulatedPhone(api.url, policy=Policy.SILENT, name="alice's phone") as p:
        enrolment = await p.enrol(ACTIVATION_CODE)

        assert enrolment.device_id == p.device_id
        assert (enrolment.user_id, enrolment.credential_id) == ("alice", "cred-alice-1")
        assert enrolment.certificate_der == b"0\x82fake DER"
        assert api.subscription == p.subscription
        assert p.audience == AUDIENCE
        assert api.challenges == set()
        assert "fake DER" not in repr(enrolment)


async def test_a_refused_enrolment_raises_without_echoing_the_activation_code(
    api: FakeDeviceApi,
) -> None:
    async with SimulatedPhone(api.url, policy=Policy.SILENT) as p:
        with pytest.raises(EnrolmentError) as raised:
            await p.enrol("ACT-0000-0000")

    assert raised.value.status == 400
    assert raised.value.error == "invalid_grant"
    assert "ACT-0000-0000" not in str(raised.value)
    assert p.enrolment is None


# -- policies ----------------------------------------------------------------------


async def test_approves_a_pushed_request_with_the_code_the_relying_app_shows(
    api: FakeDeviceApi, phone: SimulatedPhone, session: aiohttp.ClientSession
) -> None:
    request = api.create_request(display_text="Pay 120 EUR — invoice 7")

    assert await api.push(request, session) == 201
    shown = await phone.wait_for(request.request_id)

    assert shown.decision == "approve"
    assert shown.picked == request.right_code
    assert shown.codes == tuple(request.codes)
    assert shown.display_text == "Pay 120 EUR — invoice 7"
    assert shown.relying_party == "Contract Portal"
    assert shown.hashes == tuple(request.hashes)
    assert shown.outcome == (200, {"request_id": request.request_id, "state": "signed"})
    [(action, rid, claims)] = api.answers
    assert (action, rid, claims["vc"]) == (
        "approve",
        request.request_id,
        request.right_code,
    )
    [push] = phone.pushes
    assert (push.ttl, push.urgency, push.topic) == (90, "high", request.request_id[:32])


async def test_wrong_code_policy_approves_with_a_code_the_relying_app_did_not_show(
    api: FakeDeviceApi, phone: SimulatedPhone, session: aiohttp.ClientSession
) -> None:
    phone.policy = Policy.WRONG_CODE
    request = api.create_request()

    await api.push(request, session)
    shown = await phone.wait_for(request.request_id)

    assert shown.decision == "approve"
    assert shown.picked in request.codes
    assert shown.picked != request.right_code
    assert shown.outcome is not None
    assert shown.outcome[0] == 400
    assert request.state == "pending"


@pytest.mark.parametrize("shown_code", ["0000x", None], ids=["not among", "none"])
async def test_approve_policy_rejects_when_it_cannot_match_the_relying_apps_code(
    shown_code: str | None,
    api: FakeDeviceApi,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    request = api.create_request()
    async with SimulatedPhone(api.url, expected_code=lambda rid: shown_code) as p:
        await p.enrol(ACTIVATION_CODE)
        await api.push(request, session)
        shown = await p.wait_for(request.request_id)

    assert shown.decision == "reject"
    assert shown.outcome == (
        200,
        {"request_id": request.request_id, "state": "rejected"},
    )
    assert "rejecting" in caplog.text


async def test_reject_policy_sends_a_reject_sad(
    api: FakeDeviceApi, phone: SimulatedPhone, session: aiohttp.ClientSession
) -> None:
    phone.policy = Policy.REJECT
    request = api.create_request()

    await api.push(request, session)
    shown = await phone.wait_for(request.request_id)

    assert shown.decision == "reject"
    assert request.state == "rejected"
    [(action, _, claims)] = api.answers
    assert (action, claims["decision"]) == ("reject", "reject")


async def test_silent_policy_fetches_but_never_answers(
    api: FakeDeviceApi, phone: SimulatedPhone, session: aiohttp.ClientSession
) -> None:
    phone.policy = Policy.SILENT
    request = api.create_request()

    await api.push(request, session)
    shown = await phone.wait_for(request.request_id)

    assert (shown.decision, shown.picked, shown.outcome) == (None, None, None)
    assert api.fetched == [request.request_id]
    assert api.answers == []


async def test_expected_code_may_be_a_coroutine(
    api: FakeDeviceApi, session: aiohttp.ClientSession
) -> None:
    async def read_screen(request_id: str) -> str | None:
        await asyncio.sleep(0)
        return api.requests[request_id].right_code

    request = api.create_request()
    async with SimulatedPhone(api.url, expected_code=read_screen) as p:
        await p.enrol(ACTIVATION_CODE)
        await api.push(request, session)
        shown = await p.wait_for(request.request_id)

    assert shown.decision == "approve"
    assert request.state == "signed"


# -- robustness --------------------------------------------------------------------


async def test_ignores_a_push_whose_nonce_is_not_the_requests(
    api: FakeDeviceApi,
    phone: SimulatedPhone,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    request = api.create_request()

    assert await api.push(request, session, nonce="another-nonce") == 201
    await phone.wait_for_pushes(1)
    await phone.settle()

    assert api.fetched == [request.request_id]
    assert phone.shown == []
    assert api.answers == []
    assert "nonce does not match" in caplog.text


async def test_poll_once_answers_what_a_failed_push_missed(
    api: FakeDeviceApi, phone: SimulatedPhone, session: aiohttp.ClientSession
) -> None:
    phone.push_status = 410
    request = api.create_request()

    assert await api.push(request, session) == 410
    [shown] = await phone.poll_once()

    assert shown.request_id == request.request_id
    assert request.state == "signed"
    assert await phone.poll_once() == []


async def test_a_repeated_push_is_answered_once(
    api: FakeDeviceApi, phone: SimulatedPhone, session: aiohttp.ClientSession
) -> None:
    request = api.create_request()

    await api.push(request, session)
    await api.push(request, session)
    await phone.wait_for_pushes(2)
    await phone.settle()

    assert len(api.answers) == 1
    assert [s.request_id for s in phone.shown] == [request.request_id]


async def test_logs_never_carry_the_activation_code_or_the_sad(
    api: FakeDeviceApi, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mobile_stub")
    request = api.create_request()
    async with SimulatedPhone(api.url, expected_code=_reads_code_from(api)) as p:
        await p.enrol(ACTIVATION_CODE)
        await api.push(request, session)
        await p.wait_for(request.request_id)

    [sad] = api.raw_sads
    assert caplog.records
    assert ACTIVATION_CODE not in caplog.text
    assert sad not in caplog.text
    assert sad.split(".")[2] not in caplog.text


# -- persistence -------------------------------------------------------------------


async def test_a_saved_phone_answers_on_its_registered_subscription_after_load(
    api: FakeDeviceApi, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    state = tmp_path / "phone.json"
    async with SimulatedPhone(api.url, policy=Policy.SILENT) as first:
        await first.enrol(ACTIVATION_CODE)
        first.save(state)
        device_id = first.device_id

    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    loaded = SimulatedPhone.load(state, api.url, expected_code=_reads_code_from(api))
    request = api.create_request()
    async with loaded:
        await api.push(request, session)
        shown = await loaded.wait_for(request.request_id)

    assert loaded.device_id == device_id
    assert loaded.enrolment is not None
    assert loaded.enrolment.user_id == "alice"
    assert shown.outcome is not None
    assert shown.outcome[0] == 200


async def test_load_refuses_a_state_file_whose_device_id_is_not_the_keys(
    api: FakeDeviceApi, tmp_path: Path
) -> None:
    state = tmp_path / "phone.json"
    async with SimulatedPhone(api.url, policy=Policy.SILENT) as p:
        await p.enrol(ACTIVATION_CODE)
        p.save(state)
    data = json.loads(state.read_text())
    data["device_id"] = "not-the-thumbprint"
    state.write_text(json.dumps(data))

    with pytest.raises(StateFileError, match="thumbprint"):
        SimulatedPhone.load(state, api.url, policy=Policy.SILENT)


def test_an_unenrolled_phone_cannot_be_saved(tmp_path: Path) -> None:
    phone = SimulatedPhone("http://127.0.0.1:9", policy=Policy.SILENT)

    with pytest.raises(NotEnrolledError):
        phone.save(tmp_path / "phone.json")
    assert not (tmp_path / "phone.json").exists()


# -- command line ------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["enrol"], ["run"], ["enrol-and-run"]])
def test_every_subcommand_answers_help(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])

    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: sigil-phone")


def test_approving_without_a_source_of_codes_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--server", "http://x", "--state", "s.json"])

    assert exited.value.code == 2
    assert "--code-file" in capsys.readouterr().err


async def _cli(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mobile_stub",
        *args,
        stdin=asyncio.subprocess.PIPE
        if stdin is not None
        else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


async def test_cli_enrol_and_run_approves_with_the_code_file(
    api: FakeDeviceApi, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    state, codes = tmp_path / "phone.json", tmp_path / "codes.txt"
    process = await _cli(
        "enrol-and-run",
        "--server", api.url,
        "--state", str(state),
        "--policy", "approve",
        "--code-file", str(codes),
        "--count", "1",
        "--timeout", "30",
        env={"SIGIL_ACTIVATION_CODE": ACTIVATION_CODE},
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    async with asyncio.timeout(20):
        enrolled = await process.stdout.readline()
    assert enrolled.startswith(b"enrolled device ")

    request = api.create_request(display_text="Sign lease\x1b[2J for flat 3")
    codes.write_text(f"other-request 0000\n{request.request_id} {request.right_code}\n")
    assert await api.push(request, session) == 201
    async with asyncio.timeout(30):
        out, err = await process.communicate()

    assert process.returncode == 0, err.decode()
    shown = out.decode()
    assert f"request {request.request_id}" in shown
    assert "Sign lease\\x1b[2J for flat 3" in shown
    assert f"picked:        {request.right_code}" in shown
    assert "approve -> HTTP 200 signed" in shown
    assert request.state == "signed"
    assert ACTIVATION_CODE.encode() not in out + err
    assert stat.S_IMODE(state.stat().st_mode) == 0o600


async def test_cli_enrols_from_stdin_then_run_answers_on_the_saved_port(
    api: FakeDeviceApi, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    state = tmp_path / "phone.json"
    enrol = await _cli(
        "enrol", "--server", api.url, "--state", str(state),
        stdin=ACTIVATION_CODE.encode() + b"\n",
    )  # fmt: skip
    async with asyncio.timeout(30):
        _, err = await enrol.communicate(ACTIVATION_CODE.encode() + b"\n")
    assert enrol.returncode == 0, err.decode()

    run = await _cli(
        "run", "--server", api.url, "--state", str(state),
        "--policy", "reject", "--count", "1", "--timeout", "30",
    )  # fmt: skip
    assert run.stderr is not None
    async with asyncio.timeout(20):
        listening = await run.stderr.readline()
    assert listening.startswith(b"listening for pushes")
    request = api.create_request()
    assert await api.push(request, session) == 201
    async with asyncio.timeout(30):
        out, err = await run.communicate()

    assert run.returncode == 0, err.decode()
    assert "reject -> HTTP 200 rejected" in out.decode()


async def test_cli_run_exits_3_when_requests_do_not_come_in_time(
    api: FakeDeviceApi, tmp_path: Path
) -> None:
    state = tmp_path / "phone.json"
    async with SimulatedPhone(api.url, policy=Policy.SILENT) as p:
        await p.enrol(ACTIVATION_CODE)
        p.save(state)

    run = await _cli(
        "run", "--server", api.url, "--state", str(state),
        "--policy", "silent", "--count", "1", "--timeout", "0.3",
    )  # fmt: skip
    async with asyncio.timeout(30):
        _, err = await run.communicate()

    assert run.returncode == 3
    assert "timed out after 0.3 s with 0 of 1 requests handled" in err.decode()


def test_cli_refuses_to_overwrite_a_state_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "phone.json"
    state.write_text("{}")

    code = main(["enrol", "--server", "http://127.0.0.1:9", "--state", str(state)])

    assert code == 2
    assert "--force" in capsys.readouterr().err
    assert state.read_text() == "{}"


def test_shown_request_lines_for_a_silent_phone() -> None:
    from mobile_stub.cli import format_shown

    shown = ShownRequest(
        request_id="r1",
        relying_party="Portal",
        display_text="Sign\n42",
        codes=("1234", "5678", "9012"),
        picked=None,
        hashes=(),
        hash_algorithm=SHA256_OID,
        credential_id="c",
        decision=None,
        outcome=None,
    )

    text = format_shown(shown)

    assert "display text:  Sign\\n42" in text
    assert "decision:      none (silent)" in text
