"""The simulated phone on its own: imports, push endpoint, Device JWS and SAD.

Everything runs over real HTTP on loopback; no sigil server is needed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
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
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws, jwt
from joserfc.jwk import ECKey
from py_vapid import Vapid02
from pytest_aiohttp import AiohttpServer
from pywebpush import WebPusher

import mobile_stub
from mobile_stub import DROP, Policy, SimulatedPhone
from mobile_stub._b64 import b64url_decode, b64url_encode

SERVER_SIDE = {"server", "sam", "hsm", "store"}
PACKAGE_DIR = Path(mobile_stub.__file__).parent
UNUSED_SERVER = "http://127.0.0.1:9"
PUSH_MESSAGE = {"rid": "req-7Qx", "nonce": "bm9uY2Utb25l"}


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _vapid_keys() -> Vapid02:
    vapid = Vapid02()
    vapid.generate_keys()
    return vapid


def _vapid_public(vapid: Vapid02) -> str:
    return b64url_encode(_point(vapid.public_key))


def _origin(phone: SimulatedPhone) -> str:
    return phone.push_endpoint.split("/push/", 1)[0]


def _device_public_key(phone: SimulatedPhone) -> ECKey:
    return ECKey.import_key(phone.device_key.public_key())


def _vapid_token(signer: Vapid02, claims: dict[str, Any]) -> str:
    """A VAPID JWT built with joserfc, free of py_vapid's own checks."""
    return jwt.encode(
        {"alg": "ES256"}, claims, ECKey.import_key(signer.private_key), ["ES256"]
    )


def _vapid_authorization(
    signer: Vapid02, claims: dict[str, Any], *, k: Vapid02 | None = None
) -> str:
    token = _vapid_token(signer, claims)
    return f"vapid t={token}, k={_vapid_public(k or signer)}"


@pytest.fixture
async def phone() -> AsyncIterator[SimulatedPhone]:
    async with SimulatedPhone(UNUSED_SERVER, policy=Policy.SILENT) as started:
        yield started


@pytest.fixture
def vapid() -> Vapid02:
    return _vapid_keys()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


# -- isolation ---------------------------------------------------------------------


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_imports_nothing_from_the_server_side() -> None:
    modules = sorted(PACKAGE_DIR.glob("*.py"))
    assert modules
    for module in modules:
        assert not _imported_roots(module) & SERVER_SIDE, module.name

    # And at run time, in a fresh interpreter, nothing pulls them in.
    probe = (
        "import sys, mobile_stub, mobile_stub.cli, mobile_stub.phone;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_SIDE!r}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


def test_public_names_are_all_exported() -> None:
    for name in mobile_stub.__all__:
        assert hasattr(mobile_stub, name), name


# -- push endpoint: RFC 8291 and 8292 ----------------------------------------------


async def test_decrypts_a_real_rfc8291_push_and_records_its_headers(
    phone: SimulatedPhone, vapid: Vapid02, session: aiohttp.ClientSession
) -> None:
    phone.trust_server(_vapid_public(vapid))
    headers = vapid.sign(
        {
            "sub": "mailto:push@sigil.example",
            "aud": _origin(phone),
            "exp": int(time.time()) + 600,
        }
    )
    headers.update({"Urgency": "high", "Topic": "req-7Qx"})
    data = json.dumps(PUSH_MESSAGE).encode()

    pusher = WebPusher(phone.subscription, aiohttp_session=session)
    response = await pusher.send_async(data, headers=headers, ttl=60)

    assert response.status == 201
    assert response.headers["Location"].startswith(_origin(phone))
    [push] = phone.pushes
    assert push.message == PUSH_MESSAGE
    assert (push.ttl, push.urgency, push.topic) == (60, "high", "req-7Qx")
    assert phone.push_attempts == 1


async def test_subscription_is_what_a_browser_gives(phone: SimulatedPhone) -> None:
    subscription = phone.subscription

    assert set(subscription) == {"endpoint", "keys"}
    assert subscription["endpoint"].startswith("http://127.0.0.1:")
    p256dh = b64url_decode(subscription["keys"]["p256dh"])
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    assert len(p256dh) == 65
    assert len(b64url_decode(subscription["keys"]["auth"])) == 16
    assert "=" not in subscription["keys"]["p256dh"] + subscription["keys"]["auth"]


@dataclass(frozen=True)
class _Keys:
    trusted: Vapid02
    other: Vapid02
    origin: str
    now: int = field(default_factory=lambda: int(time.time()))

    def claims(self, **changes: Any) -> dict[str, Any]:
        claims = {
            "sub": "mailto:push@sigil.example",
            "aud": self.origin,
            "exp": self.now + 600,
        }
        claims.update(changes)
        return {name: value for name, value in claims.items() if value is not DROP}


def _with_altered_claims(keys: _Keys) -> str:
    header, _, signature = _vapid_token(keys.trusted, keys.claims()).split(".")
    payload = b64url_encode(json.dumps(keys.claims(sub="mailto:x@evil")).encode())
    return f"vapid t={header}.{payload}.{signature}, k={_vapid_public(keys.trusted)}"


# Each bad Authorization header, with a fragment of the reason it is refused.
BAD_VAPID: dict[str, tuple[Callable[[_Keys], str | None], str]] = {
    "no header": (lambda keys: None, "no Authorization"),
    "another scheme": (
        lambda keys: "WebPush " + _vapid_token(keys.trusted, keys.claims()),
        "not vapid",
    ),
    "another server's key": (
        lambda keys: _vapid_authorization(keys.other, keys.claims()),
        "not the subscription's key",
    ),
    "signature by another key": (
        lambda keys: _vapid_authorization(keys.other, keys.claims(), k=keys.trusted),
        "does not verify",
    ),
    "claims altered after signing": (_with_altered_claims, "does not verify"),
    "no k": (
        lambda keys: f"vapid t={_vapid_token(keys.trusted, keys.claims())}",
        "t and k",
    ),
    "aud of another origin": (
        lambda keys: _vapid_authorization(
            keys.trusted, keys.claims(aud="https://push.example.net")
        ),
        "aud",
    ),
    "expired": (
        lambda keys: _vapid_authorization(keys.trusted, keys.claims(exp=keys.now - 1)),
        "expired",
    ),
    "exp beyond 24 hours": (
        lambda keys: _vapid_authorization(
            keys.trusted, keys.claims(exp=keys.now + 24 * 3600 + 120)
        ),
        "24 hours",
    ),
    "no exp": (
        lambda keys: _vapid_authorization(keys.trusted, keys.claims(exp=DROP)),
        "exp is missing",
    ),
    "no sub": (
        lambda keys: _vapid_authorization(keys.trusted, keys.claims(sub=DROP)),
        "sub is missing",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VAPID))
async def test_refuses_a_push_without_valid_vapid_with_401(
    case: str,
    phone: SimulatedPhone,
    vapid: Vapid02,
    session: aiohttp.ClientSession,
) -> None:
    phone.trust_server(_vapid_public(vapid))
    keys = _Keys(trusted=vapid, other=_vapid_keys(), origin=_origin(phone))
    build, reason = BAD_VAPID[case]
    authorization = build(keys)
    headers = {"Urgency": "high", "Topic": "req-7Qx"}
    if authorization is not None:
        headers["Authorization"] = authorization

    pusher = WebPusher(phone.subscription, aiohttp_session=session)
    response = await pusher.send_async(
        json.dumps(PUSH_MESSAGE).encode(), headers=headers, ttl=60
    )

    assert response.status == 401
    assert reason in (await response.json())["error_description"]
    assert phone.pushes == []


async def test_refuses_every_push_before_it_trusts_a_vapid_key(
    phone: SimulatedPhone, vapid: Vapid02, session: aiohttp.ClientSession
) -> None:
    keys = _Keys(trusted=vapid, other=vapid, origin=_origin(phone))
    headers = {
        "Authorization": _vapid_authorization(vapid, keys.claims()),
        "Urgency": "high",
        "Topic": "req-7Qx",
    }

    pusher = WebPusher(phone.subscription, aiohttp_session=session)
    response = await pusher.send_async(b"{}", headers=headers, ttl=60)

    assert response.status == 401


def _encrypted(subscription: dict[str, Any], data: bytes) -> bytes:
    body = WebPusher(subscription).encode(data, "aes128gcm")["body"]
    assert isinstance(body, bytes)
    return body


def _foreign_subscription() -> dict[str, Any]:
    other = ec.generate_private_key(ec.SECP256R1())
    return {
        "endpoint": "http://127.0.0.1:9/push/other",
        "keys": {
            "p256dh": b64url_encode(_point(other.public_key())),
            "auth": b64url_encode(bytes(16)),
        },
    }


async def _post_push(
    session: aiohttp.ClientSession,
    phone: SimulatedPhone,
    vapid: Vapid02,
    body: bytes,
    **header_changes: str | None,
) -> aiohttp.ClientResponse:
    keys = _Keys(trusted=vapid, other=vapid, origin=_origin(phone))
    headers: dict[str, str | None] = {
        "Authorization": _vapid_authorization(vapid, keys.claims()),
        "Content-Encoding": "aes128gcm",
        "TTL": "60",
        "Urgency": "high",
        "Topic": "req-7Qx",
    }
    headers.update({name.replace("_", "-"): v for name, v in header_changes.items()})
    sent = {name: value for name, value in headers.items() if value is not None}
    async with session.post(phone.push_endpoint, data=body, headers=sent) as response:
        await response.read()
        return response


GARBAGE_BODIES: dict[str, Callable[[SimulatedPhone], bytes]] = {
    "random bytes": lambda phone: bytes(range(200)),
    "truncated header": lambda phone: b"\x00" * 10,
    "empty": lambda phone: b"",
    "for another subscription": lambda phone: _encrypted(
        _foreign_subscription(), json.dumps(PUSH_MESSAGE).encode()
    ),
    "flipped ciphertext bit": lambda phone: (
        lambda body: body[:-1] + bytes([body[-1] ^ 1])
    )(_encrypted(phone.subscription, json.dumps(PUSH_MESSAGE).encode())),
    "not JSON inside": lambda phone: _encrypted(phone.subscription, b"rid=1"),
}


@pytest.mark.parametrize("case", sorted(GARBAGE_BODIES))
async def test_refuses_a_body_that_does_not_decrypt_to_json_with_400(
    case: str,
    phone: SimulatedPhone,
    vapid: Vapid02,
    session: aiohttp.ClientSession,
) -> None:
    phone.trust_server(_vapid_public(vapid))

    response = await _post_push(session, phone, vapid, GARBAGE_BODIES[case](phone))

    assert response.status == 400
    assert phone.pushes == []


BAD_HEADERS: dict[str, dict[str, str | None]] = {
    "no content coding": {"Content-Encoding": None},
    "legacy aesgcm coding": {"Content-Encoding": "aesgcm"},
    "no TTL": {"TTL": None},
    "TTL 0 (PUSH-1)": {"TTL": "0"},
    "TTL not a number": {"TTL": "soon"},
    "no Urgency": {"Urgency": None},
    "unknown Urgency": {"Urgency": "urgent"},
    "no Topic": {"Topic": None},
    "Topic over 32 chars": {"Topic": "t" * 33},
    "Topic outside base64url": {"Topic": "req/7"},
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
async def test_refuses_a_push_with_bad_delivery_headers_with_400(
    case: str,
    phone: SimulatedPhone,
    vapid: Vapid02,
    session: aiohttp.ClientSession,
) -> None:
    phone.trust_server(_vapid_public(vapid))
    body = _encrypted(phone.subscription, json.dumps(PUSH_MESSAGE).encode())

    response = await _post_push(session, phone, vapid, body, **BAD_HEADERS[case])

    assert response.status == 400
    assert phone.pushes == []


async def test_refuses_an_oversized_push_with_413(
    phone: SimulatedPhone, vapid: Vapid02, session: aiohttp.ClientSession
) -> None:
    phone.trust_server(_vapid_public(vapid))

    response = await _post_push(session, phone, vapid, b"\x00" * 5000)

    assert response.status == 413
    assert phone.pushes == []


async def test_answers_an_unknown_push_path_with_404(
    phone: SimulatedPhone, session: aiohttp.ClientSession
) -> None:
    async with session.post(_origin(phone) + "/push/guessed", data=b"x") as response:
        assert response.status == 404
    assert phone.push_attempts == 0


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_retry_after"),
    [(410, None, None), (404, None, None), (429, 7, "7"), (503, None, None)],
)
async def test_plays_the_configured_push_status_for_push_2(
    status: int,
    retry_after: int | None,
    expected_retry_after: str | None,
    phone: SimulatedPhone,
    vapid: Vapid02,
    session: aiohttp.ClientSession,
) -> None:
    phone.trust_server(_vapid_public(vapid))
    phone.push_status = status
    phone.push_retry_after = retry_after
    body = _encrypted(phone.subscription, json.dumps(PUSH_MESSAGE).encode())

    response = await _post_push(session, phone, vapid, body)

    assert response.status == status
    assert response.headers.get("Retry-After") == expected_retry_after
    assert phone.pushes == []
    assert phone.push_attempts == 1


async def test_wait_for_pushes_returns_once_a_push_arrives(
    phone: SimulatedPhone, vapid: Vapid02, session: aiohttp.ClientSession
) -> None:
    phone.trust_server(_vapid_public(vapid))
    body = _encrypted(phone.subscription, json.dumps(PUSH_MESSAGE).encode())

    with pytest.raises(TimeoutError, match="1 pushes"):
        await phone.wait_for_pushes(1, timeout=0.05)
    await _post_push(session, phone, vapid, body)
    [push] = await phone.wait_for_pushes(1, timeout=5)

    assert push.message == PUSH_MESSAGE


# -- SAD ---------------------------------------------------------------------------

AUDIENCE = "https://sigil.example"
DETAILS: dict[str, Any] = {
    "request_id": "req-7Qx",
    "credential_id": "cred-alice-1",
    "hash_algorithm": "2.16.840.1.101.3.4.2.1",
    "hashes": [
        "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=",
        "LCa0a2j/xo/5m0U8HTBBNBNCLXBkg7+g+YpeiGJm564=",
    ],
    "display_text": "Sign contract 42 — Ünïcode",
    "nonce": "bm9uY2Utb25l",
    "verification_codes": ["1234", "5678", "9012"],
    "audience": AUDIENCE,
    "relying_party": "Portal",
    "state": "pending",
}


def test_device_id_is_the_rfc7638_thumbprint_of_the_public_jwk() -> None:
    phone = SimulatedPhone(UNUSED_SERVER, policy=Policy.SILENT)
    jwk = phone.public_jwk

    canonical = json.dumps(
        {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]},
        separators=(",", ":"),
    )
    expected = b64url_encode(hashlib.sha256(canonical.encode()).digest())
    assert phone.device_id == expected
    assert set(jwk) == {"kty", "crv", "x", "y"}


def test_make_sad_verifies_with_the_device_key_and_binds_the_request() -> None:
    phone = SimulatedPhone(UNUSED_SERVER, policy=Policy.SILENT)
    phone.audience = AUDIENCE

    sad = phone.make_sad(DETAILS, vc="5678", iat=1_700_000_000)

    verified = jws.deserialize_compact(sad, _device_public_key(phone), ["ES256"])
    assert verified.headers() == {
        "alg": "ES256",
        "typ": "sad+jwt",
        "kid": phone.device_id,
    }
    dth = hashlib.sha256(DETAILS["display_text"].encode("utf-8")).digest()
    assert json.loads(verified.payload) == {
        "iss": phone.device_id,
        "aud": AUDIENCE,
        "rid": "req-7Qx",
        "cid": "cred-alice-1",
        "halg": "2.16.840.1.101.3.4.2.1",
        "hashes": DETAILS["hashes"],
        "numSignatures": 2,
        "nonce": "bm9uY2Utb25l",
        "dth": b64url_encode(dth),
        "vc": "5678",
        "decision": "approve",
        "iat": 1_700_000_000,
        "exp": 1_700_000_120,
    }


def test_make_sad_overrides_replace_insert_and_drop_claims() -> None:
    phone = SimulatedPhone(UNUSED_SERVER, policy=Policy.SILENT)
    phone.audience = AUDIENCE

    sad = phone.make_sad(
        DETAILS,
        decision="reject",
        overrides={"nonce": DROP, "hashes": ["AAAA"], "extra": 1},
        header_overrides={"kid": DROP, "typ": "JWT"},
        lifetime=600,
    )

    verified = jws.deserialize_compact(sad, _device_public_key(phone), ["ES256"])
    claims = json.loads(verified.payload)
    assert "nonce" not in claims
    assert "vc" not in claims
    assert claims["hashes"] == ["AAAA"]
    assert claims["numSignatures"] == 2
    assert claims["extra"] == 1
    assert claims["decision"] == "reject"
    assert claims["exp"] - claims["iat"] == 600
    assert verified.headers() == {"alg": "ES256", "typ": "JWT"}


def test_make_sad_needs_the_servers_audience() -> None:
    phone = SimulatedPhone(UNUSED_SERVER, policy=Policy.SILENT)

    with pytest.raises(mobile_stub.NotEnrolledError):
        phone.make_sad(DETAILS)


def test_a_clone_has_its_own_key_and_keeps_the_server_parameters(
    vapid: Vapid02,
) -> None:
    phone = SimulatedPhone(UNUSED_SERVER, policy=Policy.SILENT)
    phone.trust_server(_vapid_public(vapid), audience=AUDIENCE)

    clone = phone.clone_with_new_key()

    assert clone.device_id != phone.device_id
    assert clone.audience == AUDIENCE
    assert clone.vapid_public_key == phone.vapid_public_key
    assert clone.enrolment is None
    other_key = _device_public_key(phone)
    with pytest.raises(Exception, match="signature"):
        jws.deserialize_compact(clone.make_sad(DETAILS), other_key, ["ES256"])


def test_approve_and_wrong_code_policies_need_the_relying_apps_code() -> None:
    for policy in (Policy.APPROVE, Policy.WRONG_CODE):
        with pytest.raises(ValueError, match="expected_code"):
            SimulatedPhone(UNUSED_SERVER, policy=policy)


def test_repr_shows_no_key_material() -> None:
    phone = SimulatedPhone(UNUSED_SERVER, policy=Policy.SILENT)

    text = repr(phone)

    assert phone.device_id in text
    d = phone.device_key.private_numbers().private_value.to_bytes(32, "big")
    assert b64url_encode(d) not in text


# -- Device JWS --------------------------------------------------------------------


@dataclass
class _Seen:
    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Recorder:
    url: str
    seen: list[_Seen]


@pytest.fixture
async def recorder(aiohttp_server: AiohttpServer) -> _Recorder:
    seen: list[_Seen] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(
            _Seen(request.method, request.raw_path, dict(request.headers), body)
        )
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    server = await aiohttp_server(app)
    return _Recorder(str(server.make_url("/")).rstrip("/"), seen)


def _verify_device_jws(
    phone: SimulatedPhone, seen: _Seen
) -> tuple[dict[str, Any], dict[str, Any]]:
    scheme, _, token = seen.headers["Authorization"].partition(" ")
    assert scheme == "Device"
    verified = jws.deserialize_compact(token, _device_public_key(phone), ["ES256"])
    return verified.headers(), json.loads(verified.payload)


async def test_call_signs_method_path_query_and_exact_body(
    recorder: _Recorder,
) -> None:
    async with SimulatedPhone(recorder.url, policy=Policy.SILENT) as phone:
        status, body = await phone.call(
            "POST", "/device/v1/requests/req-7Qx/approve?x=1", {"sad": "a.b.c"}
        )

    assert (status, body) == (200, {"ok": True})
    [seen] = recorder.seen
    header, claims = _verify_device_jws(phone, seen)
    assert header == {"alg": "ES256", "typ": "dev-call+jwt", "kid": phone.device_id}
    assert claims["htm"] == seen.method == "POST"
    assert claims["htu"] == seen.raw_path == "/device/v1/requests/req-7Qx/approve?x=1"
    assert claims["bh"] == b64url_encode(hashlib.sha256(seen.body).digest())
    assert json.loads(seen.body) == {"sad": "a.b.c"}
    assert seen.headers["Content-Type"] == "application/json"
    assert abs(claims["iat"] - time.time()) < 5
    assert set(claims) == {"htm", "htu", "iat", "jti", "bh"}


async def test_call_sends_a_raw_body_as_the_bytes_it_hashes(
    recorder: _Recorder,
) -> None:
    raw = b'{"sad" :  "x",\n"sad": "y"}'
    async with SimulatedPhone(recorder.url, policy=Policy.SILENT) as phone:
        await phone.call("POST", "/device/v1/requests/r/reject", raw_body=raw)

    [seen] = recorder.seen
    _, claims = _verify_device_jws(phone, seen)
    assert seen.body == raw
    assert claims["bh"] == b64url_encode(hashlib.sha256(raw).digest())


async def test_call_without_body_hashes_the_empty_string_and_uses_fresh_jtis(
    recorder: _Recorder,
) -> None:
    async with SimulatedPhone(recorder.url, policy=Policy.SILENT) as phone:
        await phone.call("GET", "/device/v1/requests")
        await phone.call("GET", "/device/v1/requests")

    first, second = (_verify_device_jws(phone, seen)[1] for seen in recorder.seen)
    assert first["htm"] == "GET"
    assert first["bh"] == b64url_encode(hashlib.sha256(b"").digest())
    assert recorder.seen[0].body == b""
    assert first["jti"] != second["jti"]


async def test_enrolment_style_call_embeds_the_public_jwk_instead_of_kid(
    recorder: _Recorder,
) -> None:
    async with SimulatedPhone(recorder.url, policy=Policy.SILENT) as phone:
        await phone.call("POST", "/device/v1/enrolment", {"a": 1}, embed_jwk=True)

    [seen] = recorder.seen
    token = seen.headers["Authorization"].removeprefix("Device ")
    header = json.loads(b64url_decode(token.split(".")[0]))
    assert "kid" not in header
    embedded = ECKey.import_key(header["jwk"])
    assert embedded.thumbprint() == phone.device_id
    jws.deserialize_compact(token, embedded, ["ES256"])


async def test_call_keeps_a_path_prefix_of_the_server_url_in_htu(
    recorder: _Recorder,
) -> None:
    base = recorder.url + "/sigil"
    async with SimulatedPhone(base, policy=Policy.SILENT) as phone:
        await phone.call("GET", "/device/v1/requests/a%20b")

    [seen] = recorder.seen
    _, claims = _verify_device_jws(phone, seen)
    assert claims["htu"] == seen.raw_path == "/sigil/device/v1/requests/a%20b"


async def test_call_can_replace_or_drop_the_authorization_header(
    recorder: _Recorder,
) -> None:
    async with SimulatedPhone(recorder.url, policy=Policy.SILENT) as phone:
        await phone.call("GET", "/device/v1/requests", authorization="Device x.y.z")
        await phone.call("GET", "/device/v1/requests", authorization=DROP)

    assert recorder.seen[0].headers["Authorization"] == "Device x.y.z"
    assert "Authorization" not in recorder.seen[1].headers


async def test_call_captures_the_header_it_sent_for_replay_tests(
    recorder: _Recorder,
) -> None:
    captured: list[str] = []
    async with SimulatedPhone(recorder.url, policy=Policy.SILENT) as phone:
        await phone.call("GET", "/device/v1/requests", capture=captured)

    assert captured == [recorder.seen[0].headers["Authorization"]]


async def test_device_authorization_crafts_a_stale_or_altered_call(
    recorder: _Recorder,
) -> None:
    async with SimulatedPhone(recorder.url, policy=Policy.SILENT) as phone:
        stale = phone.device_authorization(
            "POST", "/device/v1/requests/r/approve", b"{}", iat=1_600_000_000
        )
        altered = phone.device_authorization(
            "GET", "/device/v1/requests", overrides={"htm": "POST", "jti": DROP}
        )
        await phone.call("GET", "/device/v1/requests", authorization=stale)
        await phone.call("GET", "/device/v1/requests", authorization=altered)

    _, stale_claims = _verify_device_jws(phone, recorder.seen[0])
    _, altered_claims = _verify_device_jws(phone, recorder.seen[1])
    assert stale_claims["iat"] == 1_600_000_000
    assert stale_claims["htu"] == "/device/v1/requests/r/approve"
    assert altered_claims["htm"] == "POST"
    assert "jti" not in altered_claims
