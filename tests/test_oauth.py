"""OAuth 2.0 client credentials for relying apps, beside their API keys
(AUTH-1), and the bad input the token endpoint must refuse (INPUT-1)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDictProxy

from mobile_stub import Policy
from rp_client import RelyingPartyClient
from server.config import ConfigError, load_settings
from server.errors import ApiError
from server.oauth import (
    ACCESS_TOKENS,
    SCOPES,
    AccessTokens,
    issue_token,
    load_token_secret,
)
from server.state import CLIENT_AUTH
from store.sqlite import SqliteStore
from tests.conftest_server import EnrolFactory, Sigil

TOKEN = "/oauth2/token"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
GRANT = "grant_type=client_credentials"

Answer = tuple[int, dict[str, Any], CIMultiDictProxy[str]]


async def _post(
    sigil: Sigil,
    body: bytes | str,
    headers: dict[str, str] | None = None,
    auth: tuple[str, str] | None = None,
) -> Answer:
    sent = dict(FORM if headers is None else headers)
    if auth is not None:
        sent["Authorization"] = _basic_header(*auth)
    async with sigil.session.post(
        sigil.url + TOKEN,
        data=body.encode() if isinstance(body, str) else body,
        headers=sent,
    ) as response:
        return (
            response.status,
            await response.json(content_type=None),
            response.headers,
        )


def _basic_header(client_id: str, secret: str) -> str:
    # RFC 6749, 2.3.1: each form-encoded, then HTTP Basic (RFC 7617).
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _basic(sigil: Sigil) -> tuple[str, str]:
    return ("portal", sigil.rp.api_key)


async def _token_for(sigil: Sigil, scope: str | None = None) -> str:
    body = GRANT if scope is None else f"{GRANT}&scope={scope}"
    status, answer, _ = await _post(sigil, body, auth=_basic(sigil))
    assert status == 200, answer
    return str(answer["access_token"])


def _as(sigil: Sigil, token: str) -> RelyingPartyClient:
    return RelyingPartyClient(sigil.url, token, sigil.session)


async def _client_id(sigil: Sigil, name: str) -> str:
    (client,) = [c for c in await sigil.store.list_clients() if c.name == name]
    return client.client_id


def _assert_error(answer: Answer, status: int, error: str) -> None:
    got_status, body, _ = answer
    assert (got_status, body.get("error")) == (status, error), body
    assert set(body) == {"error", "error_description"}


# -- issuing ----------------------------------------------------------------


async def test_client_secret_basic_gets_a_bearer_token_auth1(sigil: Sigil) -> None:
    status, body, headers = await _post(sigil, GRANT, auth=_basic(sigil))

    assert status == 200, body
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == sigil.settings.oauth_token_ttl == 3600
    assert body["scope"] == "service credential"
    assert body["access_token"].count(".") == 2
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"].startswith("application/json")


async def test_client_secret_post_gets_a_bearer_token_auth1(sigil: Sigil) -> None:
    status, body, headers = await _post(
        sigil, f"{GRANT}&client_id=portal&client_secret={sigil.rp.api_key}"
    )

    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert headers["Cache-Control"] == "no-store"


async def test_basic_with_the_same_client_id_in_the_body_is_accepted(
    sigil: Sigil,
) -> None:
    status, body, _ = await _post(
        sigil, f"{GRANT}&client_id=portal", auth=_basic(sigil)
    )

    assert status == 200, body


async def test_basic_credentials_are_form_decoded_rfc6749_2_3_1(
    sigil: Sigil,
) -> None:
    # RFC 6749, 2.3.1: the id and secret are form-encoded before Basic.
    encoded = base64.b64encode(f"por%74al:{sigil.rp.api_key}".encode()).decode()

    status, body, _ = await _post(
        sigil, GRANT, headers={**FORM, "Authorization": f"Basic {encoded}"}
    )

    assert status == 200, body


@pytest.mark.parametrize(
    ("asked", "granted"),
    [
        (None, "service credential"),
        ("service", "service"),
        ("credential", "credential"),
        ("credential+service", "service credential"),
        ("service%20service", "service"),
    ],
)
async def test_scope_defaults_to_both_and_narrows_on_request(
    sigil: Sigil, asked: str | None, granted: str
) -> None:
    body = GRANT if asked is None else f"{GRANT}&scope={asked}"

    status, answer, _ = await _post(sigil, body, auth=_basic(sigil))

    assert (status, answer.get("scope")) == (200, granted), answer


async def test_blank_scope_counts_as_absent_rfc6749_3_1(sigil: Sigil) -> None:
    status, answer, _ = await _post(sigil, f"{GRANT}&scope=", auth=_basic(sigil))

    assert (status, answer.get("scope")) == (200, "service credential"), answer


# -- using ------------------------------------------------------------------


async def test_token_works_on_the_relying_party_api_like_the_api_key_auth1(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created = await sigil.ask(user)
    by_token = _as(sigil, await _token_for(sigil))

    # A request the API key made is the token's client's request too.
    seen = await by_token.get(created["request_id"])
    made = await by_token.create_user("Bob Example")
    code = await by_token.activation_code(made["user_id"])
    asked = await by_token.request_signature(
        user_id=user.user_id, hashes=[b"\x01" * 32], display_text="By token"
    )

    assert seen == await sigil.rp.get(created["request_id"])
    assert made["display_name"] == "Bob Example"
    assert code
    assert (await sigil.rp.get(asked["request_id"]))["display_text"] == "By token"


async def test_token_sees_only_its_own_clients_requests_auth1(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    created = await sigil.ask(user)
    other = await sigil.new_client("Other Portal")
    other_id = await _client_id(sigil, "Other Portal")
    status, body, _ = await _post(sigil, GRANT, auth=(other_id, other.api_key))
    assert status == 200, body

    got, answer = await _as(sigil, body["access_token"]).call(
        "GET", f"/api/v1/signature-requests/{created['request_id']}"
    )

    assert (got, answer["error"]) == (404, "not_found")


async def test_narrow_token_is_refused_where_another_scope_is_asked(
    sigil: Sigil,
) -> None:
    auth = sigil.server.app[CLIENT_AUTH]
    service_only = await _token_for(sigil, "service")

    def call(credential: str) -> Any:
        return make_mocked_request(
            "GET", "/", headers={"Authorization": f"Bearer {credential}"}
        )

    with pytest.raises(ApiError) as refused:
        await auth.verify(call(service_only), scope="credential")

    assert (refused.value.status, refused.value.error) == (403, "insufficient_scope")
    assert refused.value.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", scope="credential"'
    )
    assert (await auth.verify(call(service_only), scope="service")).client_id == (
        "portal"
    )
    assert (await auth.verify(call(service_only))).client_id == "portal"
    # An API key holds every scope.
    for scope in (None, *SCOPES):
        assert (await auth.verify(call(sigil.rp.api_key), scope=scope)).client_id == (
            "portal"
        )


async def test_narrow_token_still_works_where_no_scope_is_asked(
    sigil: Sigil,
) -> None:
    by_token = _as(sigil, await _token_for(sigil, "credential"))

    made = await by_token.create_user("Carol Example")

    assert made["display_name"] == "Carol Example"


# -- refused clients ----------------------------------------------------------


@pytest.mark.parametrize("method", ["basic", "post"])
@pytest.mark.parametrize("case", ["wrong secret", "unknown client", "other's id"])
async def test_bad_client_credentials_get_invalid_client(
    sigil: Sigil, method: str, case: str
) -> None:
    other = await sigil.new_client("Other Portal")
    client_id, secret = {
        "wrong secret": ("portal", "sk_" + secrets.token_urlsafe(32)),
        "unknown client": ("nobody", sigil.rp.api_key),
        "other's id": (await _client_id(sigil, "Other Portal"), sigil.rp.api_key),
    }[case]
    assert other.api_key != secret

    if method == "basic":
        answer = await _post(sigil, GRANT, auth=(client_id, secret))
    else:
        answer = await _post(
            sigil, f"{GRANT}&client_id={client_id}&client_secret={secret}"
        )

    _assert_error(answer, 401, "invalid_client")
    assert answer[2]["WWW-Authenticate"].startswith("Basic ")
    assert secret not in json.dumps(answer[1])


async def test_revoked_client_gets_invalid_client_auth1(sigil: Sigil) -> None:
    other = await sigil.new_client("Closing Shop")
    client_id = await _client_id(sigil, "Closing Shop")
    await sigil.store.revoke_client(client_id, now=datetime.now(UTC))

    answer = await _post(sigil, GRANT, auth=(client_id, other.api_key))

    _assert_error(answer, 401, "invalid_client")
    assert "revoked" in answer[1]["error_description"]


async def test_token_of_a_revoked_client_gets_invalid_token_auth1(
    sigil: Sigil,
) -> None:
    other = await sigil.new_client("Closing Shop")
    client_id = await _client_id(sigil, "Closing Shop")
    status, body, _ = await _post(sigil, GRANT, auth=(client_id, other.api_key))
    assert status == 200
    await sigil.store.revoke_client(client_id, now=datetime.now(UTC))

    got, answer = await _as(sigil, body["access_token"]).call(
        "POST", "/api/v1/users", {"display_name": "Zed"}
    )

    assert (got, answer["error"]) == (401, "invalid_token")
    assert "revoked" in answer["error_description"]


@pytest.mark.parametrize(
    ("case", "body", "auth"),
    [
        ("no credentials at all", GRANT, None),
        ("client_id without secret", f"{GRANT}&client_id=portal", None),
        ("blank secret", f"{GRANT}&client_id=portal&client_secret=", None),
        ("Bearer instead of Basic", GRANT, "Bearer sk_x"),
        ("Basic not base64", GRANT, "Basic !!!"),
        ("Basic without a colon", GRANT, "Basic " + base64.b64encode(b"x").decode()),
        (
            "Basic not UTF-8",
            GRANT,
            "Basic " + base64.b64encode(b"portal:\xff").decode(),
        ),
        (
            "Basic with a control character",
            GRANT,
            "Basic " + base64.b64encode(b"port\x01al:sk_x").decode(),
        ),
        ("Basic too large", GRANT, "Basic " + "QUFB" * 400),
    ],
)
async def test_missing_or_unreadable_client_authentication_gets_invalid_client(
    sigil: Sigil, case: str, body: str, auth: str | None
) -> None:
    headers = dict(FORM) if auth is None else {**FORM, "Authorization": auth}

    answer = await _post(sigil, body, headers=headers)

    _assert_error(answer, 401, "invalid_client")
    assert answer[2]["WWW-Authenticate"].startswith("Basic ")


# -- bad requests -----------------------------------------------------------


BAD_REQUESTS: list[tuple[str, bytes | str, dict[str, str] | None, str]] = [
    ("no grant type", "scope=service", None, "invalid_request"),
    ("blank grant type", "grant_type=", None, "invalid_request"),
    (
        "password grant",
        "grant_type=password&username=a&password=b",
        None,
        "unsupported_grant_type",
    ),
    (
        "authorization code grant",
        "grant_type=authorization_code&code=x",
        None,
        "unsupported_grant_type",
    ),
    ("unknown scope", f"{GRANT}&scope=admin", None, "invalid_scope"),
    ("one unknown scope", f"{GRANT}&scope=service+admin", None, "invalid_scope"),
    (
        "double space in scope",
        f"{GRANT}&scope=service++credential",
        None,
        "invalid_scope",
    ),
    ("scope with a quote", f"{GRANT}&scope=%22service%22", None, "invalid_scope"),
    ("empty body", "", None, "invalid_request"),
    (
        "JSON body",
        json.dumps({"grant_type": "client_credentials"}),
        {"Content-Type": "application/json"},
        "invalid_request",
    ),
    ("no content type", GRANT, {}, "invalid_request"),
    ("text body", GRANT, {"Content-Type": "text/plain"}, "invalid_request"),
    ("repeated grant type", f"{GRANT}&{GRANT}", None, "invalid_request"),
    (
        "repeated scope",
        f"{GRANT}&scope=service&scope=credential",
        None,
        "invalid_request",
    ),
    ("repeated unknown field", f"{GRANT}&x=1&x=2", None, "invalid_request"),
    ("empty field", f"{GRANT}&&scope=service", None, "invalid_request"),
    ("field without =", f"{GRANT}&scope", None, "invalid_request"),
    ("bad percent escape", f"{GRANT}&scope=%ff", None, "invalid_request"),
    ("body not UTF-8", GRANT.encode() + b"&scope=\xff", None, "invalid_request"),
    ("control character", f"{GRANT}&scope=service%00", None, "invalid_request"),
    ("field too long", f"{GRANT}&x={'a' * 600}", None, "invalid_request"),
    (
        "too many fields",
        GRANT + "".join(f"&f{i}=1" for i in range(20)),
        None,
        "invalid_request",
    ),
    ("body just over 4 KiB", f"{GRANT}&x=" + "a" * 4096, None, "invalid_request"),
    ("huge body", f"{GRANT}&x=" + "a" * 200_000, None, "invalid_request"),
]


@pytest.mark.parametrize(
    ("case", "body", "headers", "error"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
async def test_bad_token_request_gets_its_400_input1(
    sigil: Sigil,
    case: str,
    body: bytes | str,
    headers: dict[str, str] | None,
    error: str,
) -> None:
    answer = await _post(sigil, body, headers=headers, auth=_basic(sigil))

    _assert_error(answer, 400, error)
    assert sigil.rp.api_key not in json.dumps(answer[1])
    # The server is still up and still issues tokens.
    assert await _token_for(sigil)


async def test_huge_chunked_body_gets_400_input1(sigil: Sigil) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield GRANT.encode() + b"&x="
        for _ in range(100):
            yield b"a" * 1024

    headers = {**FORM, "Authorization": _basic_header(*_basic(sigil))}
    async with sigil.session.post(
        sigil.url + TOKEN, data=chunks(), headers=headers
    ) as response:
        body = await response.json(content_type=None)

    assert (response.status, body["error"]) == (400, "invalid_request")
    assert await _token_for(sigil)


async def test_secret_both_by_basic_and_in_the_body_is_refused_rfc6749_2_3(
    sigil: Sigil,
) -> None:
    answer = await _post(
        sigil,
        f"{GRANT}&client_id=portal&client_secret={sigil.rp.api_key}",
        auth=_basic(sigil),
    )

    _assert_error(answer, 400, "invalid_request")


async def test_client_id_differing_from_basic_is_refused(sigil: Sigil) -> None:
    answer = await _post(sigil, f"{GRANT}&client_id=other", auth=_basic(sigil))

    _assert_error(answer, 400, "invalid_request")


async def test_token_endpoint_takes_post_only(sigil: Sigil) -> None:
    async with sigil.session.get(sigil.url + TOKEN) as response:
        body = await response.json(content_type=None)

    assert (response.status, body["error"]) == (405, "method_not_allowed")


# -- refused tokens -----------------------------------------------------------


async def _refused(sigil: Sigil, token: str) -> dict[str, Any]:
    async with sigil.session.post(
        sigil.url + "/api/v1/users",
        json={"display_name": "Zed"},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        body: dict[str, Any] = await response.json(content_type=None)
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert (response.status, body["error"]) == (401, "invalid_token"), body
    assert set(body) == {"error", "error_description"}
    assert token not in body["error_description"]
    return body


async def test_expired_token_gets_invalid_token(sigil: Sigil) -> None:
    tokens = sigil.server.app[ACCESS_TOKENS]
    old = await tokens.issue("portal", SCOPES, now=time.time() - 3601)

    body = await _refused(sigil, old)

    assert "expired" in body["error_description"]


async def test_token_from_the_future_gets_invalid_token(sigil: Sigil) -> None:
    tokens = sigil.server.app[ACCESS_TOKENS]

    await _refused(sigil, await tokens.issue("portal", SCOPES, now=time.time() + 600))


def _with_claims(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    raw = json.dumps(claims, separators=(",", ":")).encode()
    forged = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


@pytest.mark.parametrize(
    "tamper",
    [
        "other client",
        "longer life",
        "signature",
        "alg none",
        "not JWS",
    ],
)
async def test_tampered_token_gets_invalid_token(sigil: Sigil, tamper: str) -> None:
    await sigil.new_client("Other Portal")
    token = await _token_for(sigil, "service")
    header, payload, signature = token.split(".")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    forged = {
        "other client": _with_claims(
            token, sub=await _client_id(sigil, "Other Portal")
        ),
        "longer life": _with_claims(token, exp=int(time.time()) + 10**6),
        "signature": f"{header}.{payload}.{signature[::-1]}",
        "alg none": f"{none_header}.{payload}.",
        "not JWS": "a.b.c",
    }[tamper]

    await _refused(sigil, forged)


async def test_token_of_another_installation_gets_invalid_token(
    sigil: Sigil,
) -> None:
    foreign = issue_token(
        secrets.token_bytes(32),
        issuer=sigil.settings.audience,
        client_id="portal",
        scopes=SCOPES,
        ttl=3600,
    )

    await _refused(sigil, foreign)


async def test_token_for_another_issuer_gets_invalid_token(sigil: Sigil) -> None:
    key = await load_token_secret(sigil.store)
    other = issue_token(
        key, issuer="another-sigil", client_id="portal", scopes=SCOPES, ttl=3600
    )

    await _refused(sigil, other)


async def test_api_key_refusals_keep_their_form_auth1(sigil: Sigil) -> None:
    status, body = await _as(sigil, "sk_wrong").call(
        "GET", "/api/v1/signature-requests/x"
    )

    assert (status, body["error"]) == (401, "unauthorized")
    assert body["error_description"] == "the API key is not valid"


# -- the secret and SAD-6 -------------------------------------------------------


async def test_secret_is_made_once_even_by_racing_processes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "race.db")
    await store.open()
    try:
        keys = await asyncio.gather(*(load_token_secret(store) for _ in range(5)))
        first = AccessTokens(store, issuer="sigil", ttl=60)
        second = AccessTokens(store, issuer="sigil", ttl=60)
        token = await first.issue("portal", SCOPES)
        access = await second.verify(token)
        stored = await store.get_setting("oauth.token_secret")
    finally:
        await store.close()

    assert len(set(keys)) == 1
    assert len(keys[0]) == 32
    assert stored == keys[0].hex()
    assert access.client_id == "portal"
    assert access.scopes == frozenset(SCOPES)


async def test_no_token_or_secret_reaches_the_logs_sad6(
    sigil: Sigil, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    by_basic = await _token_for(sigil)
    status, body, _ = await _post(
        sigil, f"{GRANT}&client_id=portal&client_secret={sigil.rp.api_key}"
    )
    assert status == 200
    by_post = body["access_token"]
    await _as(sigil, by_basic).create_user("Dana Example")
    await _post(sigil, GRANT, auth=("portal", "sk_wrong-secret"))
    await _post(sigil, f"{GRANT}&client_secret=sk_posted-secret&{GRANT}")
    await _as(sigil, by_post[:-2] + "AA").call("POST", "/api/v1/users", {})
    tokens = sigil.server.app[ACCESS_TOKENS]
    key = (await sigil.store.get_setting("oauth.token_secret")) or "missing"

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records, "the calls should have logged something"
    for name, value in {
        "token by Basic": by_basic,
        "token by post": by_post,
        "token signature": by_post.rsplit(".", 1)[1],
        "API key": sigil.rp.api_key,
        "wrong secret": "sk_wrong-secret",
        "posted secret": "sk_posted-secret",
        "signing secret": key,
    }.items():
        assert value not in logged, f"{name} reached the log"
        assert value not in repr(tokens), f"{name} is in a repr"


# -- configuration ------------------------------------------------------------


def test_token_lifetime_comes_from_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIGIL_CONFIG", raising=False)
    (tmp_path / "sigil.toml").write_text("[oauth]\ntoken_ttl_seconds = 600\n")

    assert load_settings(tmp_path).oauth_token_ttl == 600


@pytest.mark.parametrize("value", ["0", "-5", "100000", '"soon"'])
def test_unreasonable_token_lifetime_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.delenv("SIGIL_CONFIG", raising=False)
    (tmp_path / "sigil.toml").write_text(f"[oauth]\ntoken_ttl_seconds = {value}\n")

    with pytest.raises(ConfigError):
        load_settings(tmp_path)
