"""The CSC API over real HTTP: phone approval as the asynchronous
authorisation, SoftHSM2 signatures, and the spec's error cases."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from hsm import HashAlg, KeyType
from mobile_stub import Policy, SimulatedPhone
from server.config import ConfigError, load_settings
from server.csc import CscError, sign_algorithm
from store import User
from tests.conftest_server import EnrolFactory, Enrolled, Sigil, sha256
from tests.csc_client import CscClient

SHA256 = "2.16.840.1.101.3.4.2.1"
ECDSA_SHA256 = "1.2.840.10045.4.3.2"
RSA_SHA256 = "1.2.840.113549.1.1.11"
RSA_PSS = "1.2.840.113549.1.1.10"
DOCS = [sha256(b"first page"), sha256(b"second page"), sha256(b"third page")]


@pytest.fixture(params=[1, 2], ids=["v1", "v2"])
async def csc(sigil: Sigil, request: pytest.FixtureRequest) -> AsyncIterator[CscClient]:
    yield CscClient(sigil.url, sigil.rp.api_key, sigil.session, request.param)


async def approved(
    csc: CscClient, enrol: EnrolFactory, user: Enrolled, docs: list[bytes]
) -> str:
    """Authorise ``docs`` for ``user`` and let the phone approve: the SAD."""
    started = await csc.start(user.credential_id, docs)
    enrol.expected[started["handle"]] = started["verificationCode"]  # type: ignore[attr-defined]
    status, answer = await csc.finish(started["handle"])
    assert status == 200, answer
    assert 0 < answer["expiresIn"] <= 300
    return str(answer["SAD"])


def verify_ecdsa(certificate_b64: str, signature_b64: str, digest: bytes) -> None:
    certificate = x509.load_der_x509_certificate(base64.b64decode(certificate_b64))
    key = certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(
        base64.b64decode(signature_b64), digest, ec.ECDSA(Prehashed(hashes.SHA256()))
    )


async def test_info_names_the_methods_and_the_token_endpoint(
    csc: CscClient, sigil: Sigil
) -> None:
    info = await csc.ok("info", {})
    # The Host header is the client's to choose: info never repeats it.
    async with sigil.session.post(
        f"{csc.base_url}/csc/v{csc.version}/info",
        json={},
        headers={"Host": "evil.example"},
    ) as response:
        spoofed = await response.json()

    assert info["specs"].startswith("2." if csc.version == 2 else "1.0.4")
    assert "signatures/signHash" in info["methods"]
    assert info["authType"] == ["oauth2client"]
    # Without server.public_url, the address the server listens on.
    listening = f"http://{sigil.settings.host}:{sigil.settings.port}"
    assert info["oauth2"] == listening
    assert spoofed == info
    assert "logo" not in info


@pytest.mark.parametrize(
    "settings_overrides", [{"public_url": "https://sign.example.com"}]
)
async def test_info_names_the_configured_public_url(csc: CscClient) -> None:
    info = await csc.ok("info", {})

    assert info["oauth2"] == "https://sign.example.com"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://sign.example.com", "https://sign.example.com"),
        ("https://sign.example.com/", "https://sign.example.com"),
        ("http://[::1]:8443", "http://[::1]:8443"),
        ("", None),
    ],
)
def test_public_url_is_read_from_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: str | None
) -> None:
    monkeypatch.delenv("SIGIL_CONFIG", raising=False)
    monkeypatch.delenv("SIGIL_PUBLIC_URL", raising=False)
    (tmp_path / "sigil.toml").write_text(
        f'[server]\npublic_url = "{value}"\n', encoding="utf-8"
    )
    assert load_settings(tmp_path).public_url == expected

    monkeypatch.setenv("SIGIL_PUBLIC_URL", "https://env.example.com:8443")
    assert load_settings(tmp_path).public_url == "https://env.example.com:8443"


@pytest.mark.parametrize(
    "value",
    [
        "sign.example.com",
        "ftp://sign.example.com",
        "https://sign.example.com/csc",
        "https://sign.example.com?x=1",
        "https://sign.example.com#top",
        "https://user:secret@sign.example.com",
        "https://sign.example.com:99999",
        "https://",
        "https://sign.example.com\\t",
    ],
)
def test_public_url_that_is_not_a_bare_http_url_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.delenv("SIGIL_CONFIG", raising=False)
    monkeypatch.delenv("SIGIL_PUBLIC_URL", raising=False)
    (tmp_path / "sigil.toml").write_text(
        f'[server]\npublic_url = "{value}"\n', encoding="utf-8"
    )

    with pytest.raises(ConfigError, match=r"server\.public_url"):
        load_settings(tmp_path)


async def test_credentials_are_listed_and_described(
    csc: CscClient, enrol: EnrolFactory
) -> None:
    user = await enrol()

    listed = await csc.ok("credentials/list", {})
    info = await csc.ok(
        "credentials/info",
        {"credentialID": user.credential_id, "certificates": "chain", "certInfo": True},
    )

    assert listed["credentialIDs"] == [user.credential_id]
    assert info["key"] == {
        "status": "enabled",
        "algo": [ECDSA_SHA256, "1.2.840.10045.4.3.3", "1.2.840.10045.4.3.4"],
        "len": 256,
        "curve": "1.2.840.10045.3.1.7",
    }
    assert info["SCAL"] == "2" and info["multisign"] >= 1
    assert len(info["cert"]["certificates"]) == 2
    assert info["cert"]["status"] == "valid"
    assert "Alice Example" in info["cert"]["subjectDN"]
    if csc.version == 1:
        assert info["authMode"] == "implicit"
    else:
        assert info["auth"]["mode"] == "explicit"


async def test_phone_approval_authorises_and_signhash_signs_each_hash_once(
    csc: CscClient, enrol: EnrolFactory, sigil: Sigil
) -> None:
    user = await enrol()
    sad = await approved(csc, enrol, user, DOCS[:2])
    info = await csc.ok(
        "credentials/info",
        {"credentialID": user.credential_id, "certificates": "chain"},
    )
    leaf = info["cert"]["certificates"][0]

    status, first = await csc.sign(user.credential_id, sad, DOCS[:1])
    assert status == 200, first
    verify_ecdsa(leaf, first["signatures"][0], DOCS[0])

    status, again = await csc.sign(user.credential_id, sad, DOCS[:1])
    assert (status, again["error_description"]) == (
        400,
        "Hash is not authorized by the SAD: it was signed already",
    )

    status, second = await csc.sign(user.credential_id, sad, DOCS[1:2])
    assert status == 200, second
    verify_ecdsa(leaf, second["signatures"][0], DOCS[1])

    status, spent = await csc.sign(user.credential_id, sad, DOCS[1:2])
    assert status == 400 and spent["error"] == "invalid_request"
    records = await sigil.store.audit_records(limit=1000)
    assert [r.outcome for r in records if r.event == "key.use"] == ["success"] * 2


async def test_hash_not_covered_by_the_approval_is_refused(
    csc: CscClient, enrol: EnrolFactory
) -> None:
    user = await enrol()
    sad = await approved(csc, enrol, user, DOCS[:1])

    status, answer = await csc.sign(user.credential_id, sad, [sha256(b"other")])

    assert (status, answer) == (
        400,
        {
            "error": "invalid_request",
            "error_description": "Hash is not authorized by the SAD",
        },
    )


async def test_more_signatures_than_authorised_are_refused(
    csc: CscClient, enrol: EnrolFactory
) -> None:
    user = await enrol()
    sad = await approved(csc, enrol, user, DOCS[:1])

    status, answer = await csc.sign(user.credential_id, sad, [DOCS[0], DOCS[0]])

    assert status == 400
    assert answer["error_description"].startswith("Hash is not authorized by the SAD")


async def test_concurrent_signhash_calls_never_sign_a_hash_twice(
    csc: CscClient, enrol: EnrolFactory, sigil: Sigil
) -> None:
    user = await enrol()
    sad = await approved(csc, enrol, user, DOCS)

    results = await asyncio.gather(
        *(csc.sign(user.credential_id, sad, [doc]) for doc in DOCS for _ in range(4))
    )

    assert sum(status == 200 for status, _ in results) == 3
    found = await sigil.store.get_request(sad.split(".")[0])
    assert found is not None and found.state.value == "signed"
    assert sorted(found.signed_hashes) == sorted(
        base64.b64encode(d).decode() for d in DOCS
    )


async def test_tampered_unknown_or_foreign_sad_is_invalid(
    csc: CscClient, enrol: EnrolFactory, sigil: Sigil
) -> None:
    user = await enrol()
    sad = await approved(csc, enrol, user, DOCS[:1])
    request_id, mac = sad.split(".")
    other_app = await sigil.new_client("Other portal")
    other = CscClient(csc.base_url, other_app.api_key, csc.session, csc.version)

    for bad in (f"{request_id}.{mac[::-1]}", "nonsense", f"unknown.{mac}", ""):
        status, answer = await csc.sign(user.credential_id, bad, DOCS[:1])
        assert status == 400, bad
        assert answer["error_description"] in (
            "Invalid parameter SAD",
            "Missing (or invalid type) string parameter SAD",
        )
    # Another relying app can neither use the credential nor the SAD.
    status, answer = await other.sign(user.credential_id, sad, DOCS[:1])
    assert (status, answer["error_description"]) == (
        400,
        "Invalid parameter credentialID",
    )


async def test_expired_sad_is_refused(
    csc: CscClient, enrol: EnrolFactory, sigil: Sigil
) -> None:
    user = await enrol()
    sad = await approved(csc, enrol, user, DOCS[:1])
    request_id = sad.split(".")[0]
    # Let the authorisation's time run out in the store, as the clock would.
    found = await sigil.store.get_request(request_id)
    assert found is not None and found.authorized_until is not None
    await sigil.store.extend_authorization(
        request_id, until=found.authorized_until, now=found.authorized_until
    )
    sigil.service.sam._clock = lambda: found.authorized_until  # type: ignore[method-assign,assignment,return-value]

    status, answer = await csc.sign(user.credential_id, sad, DOCS[:1])

    assert (status, answer["error_description"]) == (400, "SAD expired")


async def test_extend_transaction_gives_a_new_sad_and_retires_the_old(
    csc: CscClient, enrol: EnrolFactory
) -> None:
    user = await enrol()
    sad = await approved(csc, enrol, user, DOCS[:1])
    await asyncio.sleep(1.01)

    extended = await csc.ok(
        "credentials/extendTransaction",
        {"credentialID": user.credential_id, "SAD": sad},
    )

    assert extended["SAD"] != sad and extended["expiresIn"] > 0
    status, old = await csc.sign(user.credential_id, sad, DOCS[:1])
    assert (status, old["error_description"]) == (400, "Invalid parameter SAD")
    status, _ = await csc.sign(user.credential_id, extended["SAD"], DOCS[:1])
    assert status == 200


async def test_rejection_on_the_phone_is_access_denied(
    csc: CscClient, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.REJECT)
    started = await csc.start(user.credential_id, DOCS[:1])

    status, answer = await csc.finish(started["handle"])

    assert (status, answer["error"]) == (400, "access_denied")


async def test_pending_authorisation_answers_202_with_its_handle(
    csc: CscClient, enrol: EnrolFactory
) -> None:
    user = await enrol(policy=Policy.SILENT)
    started = await csc.start(user.credential_id, DOCS[:2])

    status, answer = await csc.call(
        "credentials/authorizeCheck", {"handle": started["handle"]}
    )

    assert status == 202
    assert answer["handle"] == started["handle"]
    assert answer["verificationCode"] == started["verificationCode"]


async def test_unknown_or_foreign_credential_is_refused(
    csc: CscClient, enrol: EnrolFactory, sigil: Sigil
) -> None:
    user = await enrol()
    other_app = await sigil.new_client("Other portal")
    other = CscClient(csc.base_url, other_app.api_key, csc.session, csc.version)

    for client, credential_id in ((csc, "no-such"), (other, user.credential_id)):
        for method in ("credentials/info", "credentials/authorize"):
            status, answer = await client.call(
                method, {"credentialID": credential_id, "numSignatures": 1}
            )
            assert (status, answer["error_description"]) == (
                400,
                "Invalid parameter credentialID",
            ), method
    assert (await other.ok("credentials/list", {}))["credentialIDs"] == []


@pytest.mark.parametrize(
    ("body", "description"),
    [
        ({}, "Missing (or invalid type) string parameter credentialID"),
        (
            {"credentialID": 5},
            "Missing (or invalid type) string parameter credentialID",
        ),
        (
            {"credentialID": "c", "numSignatures": "one"},
            "Missing (or invalid type) integer parameter numSignatures",
        ),
        ({"credentialID": "c", "numSignatures": 0}, "Invalid parameter numSignatures"),
        # JSON Schema counts 1.0 as an integer; the CSC API does not.
        (
            {"credentialID": "c", "numSignatures": 1.0},
            "Missing (or invalid type) integer parameter numSignatures",
        ),
        (
            {"credentialID": "c", "numSignatures": True},
            "Missing (or invalid type) integer parameter numSignatures",
        ),
    ],
)
async def test_malformed_authorize_gets_the_specs_words(
    csc: CscClient, body: dict[str, Any], description: str
) -> None:
    status, answer = await csc.call("credentials/authorize", body)

    assert (status, answer) == (
        400,
        {"error": "invalid_request", "error_description": description},
    )


async def test_integer_fields_given_as_floats_are_refused(
    csc: CscClient, enrol: EnrolFactory, sigil: Sigil
) -> None:
    user = await enrol()
    name = "hashes" if csc.version == 2 else "hash"

    status, listed = await csc.call("credentials/list", {"maxResults": 1.0})
    assert (status, listed["error_description"]) == (
        400,
        "Missing (or invalid type) integer parameter maxResults",
    )
    status, answer = await csc.call(
        "credentials/authorize",
        {
            "credentialID": user.credential_id,
            "numSignatures": 1.0,
            name: [base64.b64encode(DOCS[0]).decode()],
        },
    )
    assert (status, answer) == (
        400,
        {
            "error": "invalid_request",
            "error_description": (
                "Missing (or invalid type) integer parameter numSignatures"
            ),
        },
    )
    assert await sigil.store.list_requests(user_id=user.user_id) == []
    assert (await csc.ok("credentials/list", {"maxResults": 1}))["credentialIDs"]


async def test_authorize_checks_hashes_and_their_count(
    csc: CscClient, enrol: EnrolFactory
) -> None:
    user = await enrol()
    name = "hashes" if csc.version == 2 else "hash"
    cases = [
        ({name: ["not base64!"], "numSignatures": 1}, "Invalid Base64 hash string"),
        ({name: ["AAAA"], "numSignatures": 1}, "Invalid digest value length"),
        (
            {name: [base64.b64encode(DOCS[0]).decode()], "numSignatures": 2},
            "Invalid value for parameter numSignatures",
        ),
        (
            {name: [base64.b64encode(DOCS[0]).decode()] * 2, "numSignatures": 2},
            f"Invalid parameter {name}",
        ),
        ({"numSignatures": 1}, f"Missing (or invalid type) array parameter {name}"),
        (
            {name: [base64.b64encode(DOCS[0]).decode()], "numSignatures": 999},
            "Numbers of signatures is too high",
        ),
    ]
    for extra, description in cases:
        status, answer = await csc.call(
            "credentials/authorize", {"credentialID": user.credential_id, **extra}
        )
        assert status == 400, extra
        assert answer["error_description"].startswith(description), answer


def _der(tag: int, *contents: bytes) -> bytes:
    """A DER TLV (short or long definite length) for the tests' PSS params."""
    body = b"".join(contents)
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


_SHA256_OID = bytes.fromhex("0609608648016503040201")
_MGF1_OID = bytes.fromhex("06092a864886f70d010108")
_NULL = b"\x05\x00"


def _pss(
    hash_params: bytes = b"",
    mgf_hash_params: bytes = b"",
    salt: bytes = b"\x00\xde",
    *,
    hash_oid: bytes = _SHA256_OID,
    after: bytes = b"",
) -> bytes:
    """RSASSA-PSS-params: SHA-256 (or ``hash_oid``), MGF1 with SHA-256, the
    salt INTEGER's content octets, and ``after`` inside the SEQUENCE."""
    return _der(
        0x30,
        _der(0xA0, _der(0x30, hash_oid, hash_params)),
        _der(0xA1, _der(0x30, _MGF1_OID, _der(0x30, _SHA256_OID, mgf_hash_params))),
        _der(0xA2, _der(0x02, salt)),
        after,
    )


# What pyHanko sends for RSA-2048: SHA-256 with explicit NULL parameters.
PYHANKO_PSS = (
    "MDWgDzANBglghkgBZQMEAgEFAKEcMBoGCSqGSIb3DQEBCDANBglghkgBZQMEAgEFAKIEAgIA3g=="
)


def test_pss_params_of_pyhanko_and_without_null_parameters_are_accepted() -> None:
    assert base64.b64decode(PYHANKO_PSS) == _pss(_NULL, _NULL)
    for raw in (_pss(_NULL, _NULL), _pss(), _pss(_NULL, b""), _pss(salt=b"\x20")):
        algorithm = sign_algorithm(
            KeyType.RSA_2048, RSA_PSS, base64.b64encode(raw).decode(), SHA256
        )
        assert algorithm.hash_alg is HashAlg.SHA256
        assert algorithm.pss_salt_length == (32 if raw.endswith(b"\x20") else 222)


_SHA1_OID = bytes.fromhex("06052b0e03021a")
_INDEFINITE = bytes([0x30, 0x80]) + _pss()[2:] + b"\x00\x00"


@pytest.mark.parametrize(
    "raw",
    [
        _pss() + b"\x00",  # trailing bytes after the SEQUENCE
        _pss(_NULL, _NULL) + _NULL,
        _INDEFINITE,  # BER indefinite length
        _pss(salt=b""),  # a zero-length INTEGER
        _pss(salt=b"\x00\x00\xde"),  # an INTEGER of more octets than needed
        _pss(b"\x02\x01\x05"),  # an INTEGER as the hash's parameters
        _pss(b"\x04\x00"),  # an OCTET STRING as the hash's parameters
        _pss(mgf_hash_params=b"\x02\x01\x05"),  # the same in MGF1's hash
        _pss(mgf_hash_params=b"\x30\x00"),
        _pss(b"\x05\x01\x00"),  # a NULL that is not empty
        _pss(after=_der(0xA3, _der(0x02, b"\x01"))),  # the default trailer, sent
        _pss(hash_oid=_SHA1_OID),
        b"\x30\x00",  # every field at its default: SHA-1
        b"\x30",
        b"",
    ],
    ids=[
        "trailing bytes",
        "trailing NULL",
        "indefinite length",
        "empty INTEGER",
        "long INTEGER",
        "INTEGER parameters",
        "OCTET STRING parameters",
        "INTEGER parameters of the MGF1 hash",
        "SEQUENCE parameters of the MGF1 hash",
        "non-empty NULL",
        "explicit default trailer",
        "SHA-1 and MGF1 with SHA-256",
        "empty SEQUENCE",
        "truncated",
        "nothing",
    ],
)
@pytest.mark.parametrize("hash_oid", [None, SHA256])
def test_pss_params_that_are_not_strict_der_are_refused(
    raw: bytes, hash_oid: str | None
) -> None:
    params = base64.b64encode(raw).decode() or "===="

    with pytest.raises(CscError) as refused:
        sign_algorithm(KeyType.RSA_2048, RSA_PSS, params, hash_oid)

    assert refused.value.description == "Invalid parameter signAlgoParams"


@pytest.mark.parametrize(
    ("key_algorithm", "sign_algo", "prefer"),
    [
        ("RSA-2048", RSA_SHA256, "pkcs1"),
        ("RSA-2048", RSA_PSS, "pss"),
        ("RSA-2048", RSA_PSS, "pss-no-null"),
    ],
)
async def test_rsa_signs_pkcs1_v1_5_and_pss(
    csc: CscClient, enrol: EnrolFactory, key_algorithm: str, sign_algo: str, prefer: str
) -> None:
    user = await enrol(key_algorithm=key_algorithm)
    sad = await approved(csc, enrol, user, DOCS[:1])
    extra: dict[str, Any] = {}
    if prefer == "pss":
        # RSASSA-PSS-params: SHA-256, MGF1 with SHA-256, salt 222 (the most
        # RSA-2048 allows, as pyHanko asks), trailer 1.
        extra["signAlgoParams"] = PYHANKO_PSS
    if prefer == "pss-no-null":
        # The same in DER with the hash identifiers' parameters left out.
        extra["signAlgoParams"] = base64.b64encode(_pss()).decode()

    status, answer = await csc.sign(
        user.credential_id, sad, DOCS[:1], sign_algo=sign_algo, **extra
    )

    assert status == 200, answer
    info = await csc.ok("credentials/info", {"credentialID": user.credential_id})
    key = x509.load_der_x509_certificate(
        base64.b64decode(info["cert"]["certificates"][0])
    ).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    pad: padding.AsymmetricPadding = (
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=222)
        if prefer.startswith("pss")
        else padding.PKCS1v15()
    )
    key.verify(
        base64.b64decode(answer["signatures"][0]),
        DOCS[0],
        pad,
        Prehashed(hashes.SHA256()),
    )


@pytest.mark.parametrize(
    ("extra", "description"),
    [
        ({"signAlgo": "1.2.840.113549.1.1.11"}, "Invalid parameter signAlgo"),
        ({"signAlgo": "1.2.3"}, "Invalid parameter signAlgo"),
        (
            {"hashAlgorithmOID": "2.16.840.1.101.3.4.2.2"},
            "Invalid parameter hashAlgorithmOID",
        ),
        ({"operationMode": "A"}, "Invalid parameter operationMode"),
        ({"signAlgoParams": "AAAA"}, "Invalid parameter signAlgoParams"),
    ],
)
async def test_signhash_checks_the_algorithm(
    csc: CscClient, enrol: EnrolFactory, extra: dict[str, Any], description: str
) -> None:
    user = await enrol()
    sad = await approved(csc, enrol, user, DOCS[:1])
    if csc.version == 1 and "hashAlgorithmOID" in extra:
        extra = {"hashAlgo": extra["hashAlgorithmOID"]}
        description = "Invalid parameter hashAlgo"

    status, answer = await csc.sign(user.credential_id, sad, DOCS[:1], **extra)

    assert (status, answer["error_description"]) == (400, description)


@pytest.mark.parametrize(
    "params",
    [
        "",
        "MAA=",
        base64.b64encode(_INDEFINITE).decode(),
        base64.b64encode(base64.b64decode(PYHANKO_PSS) + b"\x00").decode(),
    ],
    ids=["empty", "empty SEQUENCE", "indefinite length", "trailing bytes"],
)
async def test_signhash_refuses_pss_params_in_their_own_name(
    csc: CscClient, enrol: EnrolFactory, params: str
) -> None:
    user = await enrol(key_algorithm="RSA-2048")
    sad = await approved(csc, enrol, user, DOCS[:1])
    name = "hashAlgorithmOID" if csc.version == 2 else "hashAlgo"

    status, answer = await csc.sign(
        user.credential_id,
        sad,
        DOCS[:1],
        sign_algo=RSA_PSS,
        signAlgoParams=params,
        **{name: SHA256},
    )

    assert (status, answer) == (
        400,
        {
            "error": "invalid_request",
            "error_description": "Invalid parameter signAlgoParams",
        },
    )
    # Nothing was spent: the same SAD signs with the right params.
    status, _ = await csc.sign(
        user.credential_id, sad, DOCS[:1], sign_algo=RSA_PSS, signAlgoParams=PYHANKO_PSS
    )
    assert status == 200


async def test_both_spellings_of_a_field_are_refused(
    csc: CscClient, enrol: EnrolFactory
) -> None:
    user = await enrol()
    digest = base64.b64encode(DOCS[0]).decode()

    status, answer = await csc.call(
        "credentials/authorize",
        {
            "credentialID": user.credential_id,
            "numSignatures": 1,
            "hash": [digest],
            "hashes": [digest],
        },
    )

    assert status == 400
    assert answer["error_description"].startswith("Invalid parameter hash")


async def test_calls_need_a_token_with_the_right_scope(sigil: Sigil) -> None:
    basic = base64.b64encode(f"portal:{sigil.rp.api_key}".encode()).decode()
    async with sigil.session.post(
        f"{sigil.url}/csc/v2/credentials/list", json={}
    ) as response:
        assert response.status == 401
    async with sigil.session.post(
        f"{sigil.url}/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "service"},
        headers={"Authorization": "Basic " + basic},
    ) as response:
        token = (await response.json())["access_token"]
    narrow = CscClient(sigil.url, token, sigil.session, 2)

    assert (await narrow.call("credentials/list", {}))[0] == 200
    status, answer = await narrow.call(
        "credentials/authorize", {"credentialID": "x", "numSignatures": 1}
    )
    assert (status, answer["error"]) == (403, "insufficient_scope")


# -- second factors in the spec's explicit mode (AUTH-3) ---------------------


def _factor(csc: CscClient, name: str, value: str) -> dict[str, Any]:
    if csc.version == 1:
        return {name: value}
    return {"authData": [{"id": name, "value": value}]}


async def test_pin_credential_is_described_and_authorised_with_its_pin(
    csc: CscClient, enrol: EnrolFactory
) -> None:
    user = await enrol(second_factor="pin", pin="4711")

    info = await csc.ok(
        "credentials/info", {"credentialID": user.credential_id, "authInfo": True}
    )
    if csc.version == 1:
        assert info["authMode"] == "explicit"
        assert info["PIN"]["presence"] == "true"
    else:
        assert info["auth"]["expression"] == "PIN"
        assert info["auth"]["objects"][0]["id"] == "PIN"

    started = await csc.start(
        user.credential_id, DOCS[:1], **_factor(csc, "PIN", "4711")
    )
    enrol.expected[started["handle"]] = started["verificationCode"]  # type: ignore[attr-defined]
    status, answer = await csc.finish(started["handle"])
    assert status == 200, answer


async def test_missing_or_wrong_pin_is_refused_and_five_lock_the_credential(
    csc: CscClient, enrol: EnrolFactory, sigil: Sigil
) -> None:
    user = await enrol(second_factor="pin", pin="4711")
    body = {
        "credentialID": user.credential_id,
        "numSignatures": 1,
        "hashes" if csc.version == 2 else "hash": [base64.b64encode(DOCS[0]).decode()],
    }

    status, answer = await csc.call("credentials/authorize", body)
    assert (status, answer["error_description"]) == (
        400,
        "Missing authentication data: PIN",
    )
    for _ in range(5):
        status, answer = await csc.call(
            "credentials/authorize", {**body, **_factor(csc, "PIN", "0000")}
        )
        assert (status, answer["error"]) == (400, "invalid_authentication_data")
    status, answer = await csc.call(
        "credentials/authorize", {**body, **_factor(csc, "PIN", "4711")}
    )
    assert (status, answer) == (
        400,
        {"error": "invalid_request", "error_description": "Credential locked"},
    )
    # Nothing reached the phone.
    assert await sigil.store.list_requests(user_id=user.user_id) == []


async def test_totp_code_is_accepted_once(csc: CscClient, enrol: EnrolFactory) -> None:
    user = await enrol(second_factor="totp")
    code = await user.phone.fresh_otp()

    started = await csc.start(user.credential_id, DOCS[:1], **_factor(csc, "OTP", code))
    assert started["handle"]
    status, answer = await csc.call(
        "credentials/authorize",
        {
            "credentialID": user.credential_id,
            "numSignatures": 1,
            "hashes" if csc.version == 2 else "hash": [
                base64.b64encode(DOCS[1]).decode()
            ],
            **_factor(csc, "OTP", code),
        },
    )

    assert (status, answer["error"]) == (400, "invalid_authentication_data")


def _authorize_body(csc: CscClient, credential_id: str) -> dict[str, Any]:
    return {
        "credentialID": credential_id,
        "numSignatures": 1,
        "hashes" if csc.version == 2 else "hash": [base64.b64encode(DOCS[0]).decode()],
    }


@pytest.mark.parametrize(
    ("auth_data", "description"),
    [
        (
            [{"id": "PIN", "value": "0000"}, {"id": "PIN", "value": "4711"}],
            "Invalid parameter authData: PIN is given twice",
        ),
        (
            [{"id": "PIN", "value": "4711"}, {"id": "PIN", "value": "4711"}],
            "Invalid parameter authData: PIN is given twice",
        ),
        ([{"id": "PASSWORD", "value": "4711"}], "Invalid parameter authData"),
        (
            [{"id": "PIN", "value": "4711"}, {"id": "pin", "value": "4711"}],
            "Invalid parameter authData",
        ),
    ],
    ids=["PIN twice, last right", "PIN twice", "unknown id", "lower-case id"],
)
async def test_authdata_ids_must_be_known_and_given_once(
    csc: CscClient,
    enrol: EnrolFactory,
    sigil: Sigil,
    auth_data: list[dict[str, str]],
    description: str,
) -> None:
    user = await enrol(second_factor="pin", pin="4711")

    status, answer = await csc.call(
        "credentials/authorize",
        {**_authorize_body(csc, user.credential_id), "authData": auth_data},
    )

    assert (status, answer) == (
        400,
        {"error": "invalid_request", "error_description": description},
    )
    # Nothing was checked, nothing reached the phone.
    assert await sigil.store.list_requests(user_id=user.user_id) == []
    records = await sigil.store.audit_records(limit=1000)
    assert not [r for r in records if r.event == "factor.checked"]


@pytest.mark.parametrize(
    ("policy", "sent", "description"),
    [
        (
            "none",
            "PIN",
            "Invalid parameter PIN: the signer's policy asks for no PIN or OTP",
        ),
        (
            "none",
            "OTP",
            "Invalid parameter OTP: the signer's policy asks for no PIN or OTP",
        ),
        (
            "pin",
            "OTP",
            "Invalid parameter OTP: the signer's policy asks for a PIN, not an OTP",
        ),
        (
            "totp",
            "PIN",
            "Invalid parameter PIN: the signer's policy asks for an OTP, not a PIN",
        ),
    ],
)
async def test_a_factor_the_policy_does_not_ask_for_is_refused(
    csc: CscClient,
    enrol: EnrolFactory,
    sigil: Sigil,
    policy: str,
    sent: str,
    description: str,
) -> None:
    user = await enrol(
        second_factor=policy, **({"pin": "4711"} if policy == "pin" else {})
    )
    value = "4711" if sent == "PIN" else "123456"

    status, answer = await csc.call(
        "credentials/authorize",
        {**_authorize_body(csc, user.credential_id), **_factor(csc, sent, value)},
    )

    assert (status, answer) == (
        400,
        {"error": "invalid_request", "error_description": description},
    )
    assert await sigil.store.list_requests(user_id=user.user_id) == []


async def test_the_asked_factor_with_another_one_is_refused(
    csc: CscClient, enrol: EnrolFactory, sigil: Sigil
) -> None:
    user = await enrol(second_factor="pin", pin="4711")
    both = (
        {"PIN": "4711", "OTP": "123456"}
        if csc.version == 1
        else {
            "authData": [
                {"id": "PIN", "value": "4711"},
                {"id": "OTP", "value": "123456"},
            ]
        }
    )

    status, answer = await csc.call(
        "credentials/authorize", {**_authorize_body(csc, user.credential_id), **both}
    )

    assert (status, answer["error_description"]) == (
        400,
        "Invalid parameter OTP: the signer's policy asks for a PIN, not an OTP",
    )
    assert await sigil.store.list_requests(user_id=user.user_id) == []


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("[csc]\nmultisign = 101\n", "csc.multisign"),
        ("[csc]\nmultisign = 0\n", "csc.multisign"),
        ("[requests]\nmax_hashes = 500\n", "requests.max_hashes"),
    ],
)
def test_more_hashes_than_a_phone_sad_can_carry_are_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, name: str
) -> None:
    # The phone's SAD lists every hash in at most 16 KiB (sam/sad.py).
    monkeypatch.delenv("SIGIL_CONFIG", raising=False)
    (tmp_path / "sigil.toml").write_text(text, encoding="utf-8")

    with pytest.raises(ConfigError, match=name):
        load_settings(tmp_path)


async def test_sad_and_handle_of_one_relying_app_are_useless_to_another(
    csc: CscClient, sigil: Sigil, enrol: EnrolFactory
) -> None:
    # A user the operator created: every relying app may use the credential.
    await sigil.store.add_user(
        User(
            user_id="shared",
            display_name="Shared Signer",
            key_algorithm="EC-P256",
            created_at=datetime.now(UTC),
        )
    )
    expected: dict[str, str] = {}
    async with SimulatedPhone(sigil.url, expected_code=expected.get) as phone:
        enrolment = await phone.enrol(await sigil.operator_code("shared"))
        credential_id = enrolment.credential_id
        started = await csc.start(credential_id, DOCS[:1])
        expected[started["handle"]] = started["verificationCode"]
        status, answer = await csc.finish(started["handle"])
        assert status == 200, answer
        sad = answer["SAD"]
        other_app = await sigil.new_client("Other portal")
        other = CscClient(csc.base_url, other_app.api_key, csc.session, csc.version)

        assert (await other.ok("credentials/list", {}))["credentialIDs"] == [
            credential_id
        ]
        status, answer = await other.sign(credential_id, sad, DOCS[:1])
        assert (status, answer["error_description"]) == (400, "Invalid parameter SAD")
        status, answer = await other.call(
            "credentials/authorizeCheck", {"handle": started["handle"]}
        )
        assert (status, answer["error_description"]) == (
            400,
            "Invalid parameter handle",
        )
        status, answer = await other.call(
            "credentials/extendTransaction",
            {"credentialID": credential_id, "SAD": sad},
        )
        assert (status, answer["error_description"]) == (400, "Invalid parameter SAD")
        # The app that asked still signs.
        status, _ = await csc.sign(credential_id, sad, DOCS[:1])
        assert status == 200
