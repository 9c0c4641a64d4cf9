"""Bad input of every kind gets a 4xx with a JSON error body; the server
stays up and stores nothing (INPUT-1)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from mobile_stub import Policy
from tests.conftest_server import EnrolFactory, Sigil, sha256
from tests.csc_client import CscClient

GOOD_HASH = base64.b64encode(sha256(b"doc")).decode()

# (case, body or raw bytes, expected status, expected error)
REQUEST_CASES: list[tuple[str, Any, int, str]] = [
    ("bad base64", {"hashes": ["not base64!"]}, 400, "invalid_request"),
    ("base64 with bad padding", {"hashes": ["YWJj="]}, 400, "invalid_request"),
    (
        "wrong hash length",
        {"hashes": [base64.b64encode(b"short").decode()]},
        400,
        "invalid_request",
    ),
    (
        "sha-384 length under sha-256",
        {"hashes": [base64.b64encode(bytes(48)).decode()]},
        400,
        "invalid_request",
    ),
    ("unknown algorithm", {"hash_algorithm": "MD5"}, 400, "invalid_hash_algorithm"),
    ("unknown OID", {"hash_algorithm": "1.2.3.4"}, 400, "invalid_hash_algorithm"),
    ("too many hashes", {"hashes": [GOOD_HASH] * 33}, 400, "invalid_request"),
    ("no hashes", {"hashes": []}, 400, "invalid_request"),
    ("hashes not a list", {"hashes": GOOD_HASH}, 400, "invalid_request"),
    ("hash not a string", {"hashes": [123]}, 400, "invalid_request"),
    ("display text not a string", {"display_text": 5}, 400, "invalid_request"),
    ("display text empty", {"display_text": ""}, 400, "invalid_request"),
    ("display text too long", {"display_text": "x" * 201}, 400, "invalid_request"),
    ("ttl too long", {"ttl_seconds": 100000}, 400, "invalid_request"),
    ("ttl not a number", {"ttl_seconds": "soon"}, 400, "invalid_request"),
    ("unknown field", {"colour": "blue"}, 400, "invalid_request"),
    ("missing hashes", {"hashes": None}, 400, "invalid_request"),
    ("missing display text", {"display_text": None}, 400, "invalid_request"),
    ("unknown user", {"user_id": "nobody"}, 400, "unknown_user"),
    (
        "both user and credential",
        {"credential_id": "c-1"},
        400,
        "invalid_request",
    ),
    (
        "unknown credential",
        {"user_id": None, "credential_id": "c-1"},
        400,
        "unknown_credential",
    ),
    ("idempotency key with spaces", {"idempotency_key": "a b"}, 400, "invalid_request"),
    (
        "idempotency key with newline",
        {"idempotency_key": "abc\n"},
        400,
        "invalid_request",
    ),
    (
        "display text with a control character",
        {"display_text": "Pay\x1b[2J"},
        400,
        "invalid_request",
    ),
    (
        "display text with a direction override",
        {"display_text": "Pay \u202e01"},
        400,
        "invalid_request",
    ),
    (
        "display text with a line separator",
        {"display_text": "Pay 10\u2028EUR"},
        400,
        "invalid_request",
    ),
    (
        "display text with a zero-width space",
        {"display_text": "Pay\u200b10"},
        400,
        "invalid_request",
    ),
    (
        "display text with a tag character",
        {"display_text": "Pay\U000e0041"},
        400,
        "invalid_request",
    ),
    ("display text of blanks", {"display_text": " \u3000 "}, 400, "invalid_request"),
    (
        "display text with a lone surrogate",
        {"display_text": "\ud800"},
        400,
        "invalid_request",
    ),
]

# Text the phone would show as something other than it is: unassigned code
# points and non-characters, letters that show as nothing, stacked marks.
MISLEADING_TEXT: list[tuple[str, str, str]] = [
    ("a non-character", "Pay\uffff 10", "non-character"),
    ("a non-character of the last plane", "Pay\U0010ffff 10", "non-character"),
    ("an unassigned code point", "Pay\u0378 10", "non-character"),
    ("a Hangul choseong filler", "Pay\u115f 10", "blank filler"),
    ("a Hangul jungseong filler", "Pay\u1160 10", "blank filler"),
    ("a Hangul filler", "Pay\u3164 10", "blank filler"),
    ("a halfwidth Hangul filler", "Pay\uffa0 10", "blank filler"),
    ("a blank braille pattern", "Pay\u2800 10", "blank filler"),
    ("only blank fillers", "\u3164\u3164", "blank filler"),
    ("five stacked combining marks", "Pay 1" + "\u0301" * 5 + "0", "combining"),
    (
        "stacked marks of several kinds",
        "Pay 1\u0301\u0302\u0303\u0304\u0305\u0306 EUR",
        "combining",
    ),
    ("five enclosing marks", "OK" + "\u20dd" * 5, "combining"),
]
REQUEST_CASES += [
    (f"display text with {case}", {"display_text": text}, 400, "invalid_request")
    for case, text, _ in MISLEADING_TEXT
]


def _body(user_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user_id": user_id,
        "hash_algorithm": "SHA-256",
        "hashes": [GOOD_HASH],
        "display_text": "Sign?",
    }
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


async def _request_count(sigil: Sigil) -> int:
    return len(await sigil.store.list_requests(limit=1000))


@pytest.mark.parametrize(
    ("case", "changes", "status", "error"),
    REQUEST_CASES,
    ids=[c[0] for c in REQUEST_CASES],
)
async def test_bad_signature_request_gets_its_4xx_input1(
    sigil: Sigil,
    enrol: EnrolFactory,
    case: str,
    changes: dict[str, Any],
    status: int,
    error: str,
) -> None:
    user = await enrol(policy=Policy.SILENT)
    before = await _request_count(sigil)

    got_status, body = await sigil.rp.call(
        "POST", "/api/v1/signature-requests", _body(user.user_id, changes)
    )

    assert (got_status, body.get("error")) == (status, error), body
    assert set(body) == {"error", "error_description"}
    assert await _request_count(sigil) == before
    # The server is still up and still works.
    ok_status, _ = await sigil.rp.call(
        "POST", "/api/v1/signature-requests", _body(user.user_id, {})
    )
    assert ok_status == 201


async def test_display_text_in_other_scripts_is_welcome(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)

    for text in ("Подпишите договор", "契約書に署名", "Ünterschrift für € 10"):
        status, body = await sigil.rp.call(
            "POST",
            "/api/v1/signature-requests",
            _body(user.user_id, {"display_text": text}),
        )
        assert status == 201, body
        assert body["display_text"] == text


async def test_display_text_with_a_few_combining_marks_is_welcome(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)

    for text in (
        "Ky\u0301 ho\u031b\u0323p \u0111o\u0302\u0300ng",  # Vietnamese, decomposed
        "हस्ताक्षर करें",
        "e" + "\u0301" * 4,
        "\u05e9\u05c1\u05b8\u0591\u05b9",  # Hebrew: letter, points, accent
    ):
        status, body = await sigil.rp.call(
            "POST",
            "/api/v1/signature-requests",
            _body(user.user_id, {"display_text": text}),
        )
        assert status == 201, (text, body)
        assert body["display_text"] == text


@pytest.mark.parametrize(
    ("case", "text", "words"),
    MISLEADING_TEXT,
    ids=[c[0] for c in MISLEADING_TEXT],
)
async def test_misleading_csc_description_is_refused(
    sigil: Sigil, enrol: EnrolFactory, case: str, text: str, words: str
) -> None:
    user = await enrol(policy=Policy.SILENT)
    csc = CscClient(sigil.url, sigil.rp.api_key, sigil.session, 2)
    body = {
        "credentialID": user.credential_id,
        "numSignatures": 1,
        "hashes": [GOOD_HASH],
        "hashAlgorithmOID": "2.16.840.1.101.3.4.2.1",
    }

    status, answer = await csc.call(
        "credentials/authorize", {**body, "description": text}
    )

    assert (status, answer["error"]) == (400, "invalid_request"), answer
    assert answer["error_description"].startswith("body.description contains")
    assert words in answer["error_description"]
    assert await _request_count(sigil) == 0
    # The same without the description is authorised.
    status, _ = await csc.call("credentials/authorize", body)
    assert status == 202


RAW_CASES: list[tuple[str, str, str, bytes, dict[str, str], int, str]] = [
    (
        "repeated member",
        "POST",
        "/api/v1/users",
        b'{"display_name": "A", "display_name": "B"}',
        {},
        400,
        "invalid_request",
    ),
    (
        "deeply nested JSON",
        "POST",
        "/api/v1/users",
        b'{"display_name": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        {},
        400,
        "invalid_request",
    ),
    (
        "NaN",
        "POST",
        "/api/v1/signature-requests",
        b'{"ttl_seconds": NaN}',
        {},
        400,
        "invalid_request",
    ),
    (
        "Infinity",
        "POST",
        "/api/v1/signature-requests",
        b'{"ttl_seconds": 1e400}',
        {},
        400,
        "invalid_request",
    ),
    (
        "lone surrogate escape",
        "POST",
        "/api/v1/users",
        b'{"display_name": "\\ud800"}',
        {},
        400,
        "invalid_request",
    ),
    (
        "user id of dots",
        "POST",
        "/api/v1/users",
        b'{"display_name": "A", "user_id": ".."}',
        {},
        400,
        "invalid_request",
    ),
    (
        "display name too long for a certificate",
        "POST",
        "/api/v1/users",
        ('{"display_name": "' + "\u00e9" * 40 + '"}').encode(),
        {},
        400,
        "invalid_request",
    ),
    (
        "non-JSON",
        "POST",
        "/api/v1/signature-requests",
        b"{not json",
        {},
        400,
        "invalid_request",
    ),
    (
        "JSON array",
        "POST",
        "/api/v1/signature-requests",
        b"[1, 2]",
        {},
        400,
        "invalid_request",
    ),
    (
        "empty body",
        "POST",
        "/api/v1/signature-requests",
        b"",
        {},
        400,
        "invalid_request",
    ),
    (
        "invalid UTF-8",
        "POST",
        "/api/v1/signature-requests",
        b'{"a": "\xff"}',
        {},
        400,
        "invalid_request",
    ),
    (
        "oversized body",
        "POST",
        "/api/v1/signature-requests",
        b'{"display_text": "' + b"x" * 200_000 + b'"}',
        {},
        413,
        "request_too_large",
    ),
    (
        "no API key",
        "POST",
        "/api/v1/signature-requests",
        b"{}",
        {"Authorization": ""},
        401,
        "unauthorized",
    ),
    (
        "wrong API key",
        "GET",
        "/api/v1/signature-requests/x",
        b"",
        {"Authorization": "Bearer sk_wrong"},
        401,
        "unauthorized",
    ),
    (
        "unknown request",
        "GET",
        "/api/v1/signature-requests/nope",
        b"",
        {},
        404,
        "not_found",
    ),
    (
        "wait not a number",
        "GET",
        "/api/v1/signature-requests/x?wait=soon",
        b"",
        {},
        400,
        "invalid_request",
    ),
    (
        "wait too long",
        "GET",
        "/api/v1/signature-requests/x?wait=3600",
        b"",
        {},
        400,
        "invalid_request",
    ),
    ("unknown path", "GET", "/api/v1/nothing-here", b"", {}, 404, "not_found"),
    ("wrong method", "DELETE", "/api/v1/users", b"", {}, 405, "method_not_allowed"),
    (
        "bad user body",
        "POST",
        "/api/v1/users",
        b'{"display_name": 7}',
        {},
        400,
        "invalid_request",
    ),
    (
        "bad key algorithm",
        "POST",
        "/api/v1/users",
        b'{"display_name": "A", "key_algorithm": "DSA"}',
        {},
        400,
        "invalid_request",
    ),
    (
        "code for unknown user",
        "POST",
        "/api/v1/users/nobody/activation-codes",
        b"",
        {},
        404,
        "unknown_user",
    ),
    (
        "device call without signature",
        "GET",
        "/device/v1/requests",
        b"",
        {},
        401,
        "unauthorized",
    ),
    (
        "device call with garbage signature",
        "GET",
        "/device/v1/requests",
        b"",
        {"Authorization": "Device a.b.c"},
        401,
        "unauthorized",
    ),
    (
        "approve without signature",
        "POST",
        "/device/v1/requests/x/approve",
        b'{"sad": "a.b.c"}',
        {},
        401,
        "unauthorized",
    ),
    (
        "enrolment without signature",
        "POST",
        "/device/v1/enrolment",
        b"{}",
        {},
        401,
        "unauthorized",
    ),
]


@pytest.mark.parametrize(
    ("case", "method", "path", "raw", "headers", "status", "error"),
    RAW_CASES,
    ids=[c[0] for c in RAW_CASES],
)
async def test_malformed_call_gets_its_4xx_input1(
    sigil: Sigil,
    case: str,
    method: str,
    path: str,
    raw: bytes,
    headers: dict[str, str],
    status: int,
    error: str,
) -> None:
    sent = {"Authorization": f"Bearer {sigil.rp.api_key}", **headers}
    if not sent["Authorization"]:
        del sent["Authorization"]
    async with sigil.session.request(
        method, sigil.url + path, data=raw, headers=sent
    ) as response:
        body = await response.json(content_type=None)
        assert response.content_type == "application/json"

    assert (response.status, body.get("error")) == (status, error), body
    assert set(body) == {"error", "error_description"}
    assert "Traceback" not in body["error_description"]
    status_ok, _ = await sigil.rp.call("GET", "/api/v1/ca")
    assert status_ok == 200


async def test_enrolment_with_a_wrong_activation_code_is_refused(
    sigil: Sigil,
) -> None:
    from mobile_stub import SimulatedPhone
    from mobile_stub.errors import EnrolmentError

    async with SimulatedPhone(sigil.url, policy=Policy.SILENT) as phone:
        with pytest.raises(EnrolmentError) as raised:
            await phone.enrol("AAAAA-BBBBB-CCCCC-DDDDD")

    assert raised.value.status == 403
    assert raised.value.error == "invalid_activation_code"
    assert await sigil.store.list_devices() == []


async def test_activation_code_works_once(sigil: Sigil, enrol: EnrolFactory) -> None:
    from mobile_stub import SimulatedPhone
    from mobile_stub.errors import EnrolmentError

    user = await sigil.rp.create_user("Carol")
    code = await sigil.rp.activation_code(user["user_id"])
    async with SimulatedPhone(sigil.url, policy=Policy.SILENT) as first:
        await first.enrol(code)
    async with SimulatedPhone(sigil.url, policy=Policy.SILENT) as second:
        with pytest.raises(EnrolmentError) as raised:
            await second.enrol(code)

    assert raised.value.status == 403
    assert len(await sigil.store.list_devices(user_id=user["user_id"])) == 1


async def test_replayed_device_call_is_refused_auth2(
    sigil: Sigil, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    captured: list[str] = []
    status, _ = await user.phone.call("GET", "/device/v1/requests", capture=captured)
    assert status == 200

    async with sigil.session.get(
        sigil.url + "/device/v1/requests", headers={"Authorization": captured[0]}
    ) as response:
        body = await response.json()

    assert response.status == 401
    assert "already used" in body["error_description"]
