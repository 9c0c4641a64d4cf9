"""docs/openapi.yaml describes the server as it is: its routes, the JSON
Schemas it validates bodies with and the fields its views produce."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from hsm import Hsm
from sam import code_choices
from server.app import Parts, create_app
from server.config import Settings
from server.csc import credential_info
from server.csc_api import _SCHEMAS as CSC_SCHEMAS
from server.csc_api import _V1_NAMES as CSC_V1_NAMES
from server.csc_api import _pending as csc_pending
from server.oauth import SCOPES, TOKEN_PATH
from server.validation import SCHEMAS
from server.views import request_for_client, request_for_device, user_view
from store import Credential, RequestState, SignatureRequest, User
from store.sqlite import SqliteStore

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"

# server/validation.py SCHEMAS name -> components/schemas name in the spec.
BODY_SCHEMAS = {
    "create_user": "CreateUserBody",
    "create_request": "CreateSignatureRequestBody",
    "enrol": "EnrolmentBody",
    "sad": "SadBody",
    "approve": "ApprovalBody",
}

# server/csc_api.py _SCHEMAS method -> components/schemas name in the spec.
CSC_BODY_SCHEMAS = {
    "info": "CscInfoBody",
    "credentials/list": "CscCredentialsListBody",
    "credentials/info": "CscCredentialsInfoBody",
    "credentials/authorize": "CscAuthorizeBody",
    "credentials/authorizeCheck": "CscAuthorizeCheckBody",
    "credentials/extendTransaction": "CscExtendTransactionBody",
    "signatures/signHash": "CscSignHashBody",
}
# v1.0.4 fields the CSC API turns into v2 authData items before validating.
CSC_FACTORS = ("PIN", "OTP")

# Keywords that document a schema without changing what it accepts.
ANNOTATIONS = frozenset({"description", "title", "examples", "$comment", "writeOnly"})

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "options", "head"})

SHA256_OID = "2.16.840.1.101.3.4.2.1"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return loaded


def _schema(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = spec["components"]["schemas"][name]
    return found


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref: str = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local references are expected, not {ref}")
        target: Any = spec
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def _without_annotations(schema: Any) -> Any:
    """The schema with its documentation keywords removed, recursively."""
    if isinstance(schema, list):
        return [_without_annotations(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    stripped: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ANNOTATIONS:
            continue
        if key == "properties":
            # Keys here are field names, not keywords: keep every one.
            stripped[key] = {n: _without_annotations(s) for n, s in value.items()}
        else:
            stripped[key] = _without_annotations(value)
    return stripped


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def _signed_request() -> SignatureRequest:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return SignatureRequest(
        request_id="r-1",
        client_id="portal",
        user_id="alice",
        credential_id="c-1",
        hash_algorithm=SHA256_OID,
        hashes=("AAAA",),
        display_text="Sign contract 42",
        nonce="n-1",
        verification_code="1234",
        state=RequestState.SIGNED,
        created_at=now,
        updated_at=now,
        expires_at=now + timedelta(seconds=120),
        idempotency_key="order-42",
        signatures=("MEUC",),
        sad_digest="ab" * 32,
        error="not_really_but_every_optional_field_is_set",
        finished_at=now + timedelta(seconds=10),
    )


def _pending_request() -> SignatureRequest:
    signed = _signed_request()
    return SignatureRequest(
        request_id=signed.request_id,
        client_id=signed.client_id,
        user_id=signed.user_id,
        credential_id=signed.credential_id,
        hash_algorithm=signed.hash_algorithm,
        hashes=signed.hashes,
        display_text=signed.display_text,
        nonce=signed.nonce,
        verification_code=signed.verification_code,
        state=RequestState.PENDING,
        created_at=signed.created_at,
        updated_at=signed.updated_at,
        expires_at=signed.expires_at,
    )


def _credential() -> Credential:
    return Credential(
        credential_id="c-1",
        user_id="alice",
        key_id="k-1",
        key_algorithm="EC-P256",
        certificate_der=b"signer",
        chain_der=(b"signer", b"ca"),
        status="active",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert str(spec["openapi"]).startswith("3.1.")
    validate(spec, cls=OpenAPIV31SpecValidator)


async def test_paths_are_exactly_the_routes_of_the_app(
    spec: dict[str, Any], hsm: Hsm, tmp_path: Path
) -> None:
    # create_app only wires the store and HSM in; nothing is opened here.
    settings = Settings(home=tmp_path)
    app = create_app(settings, Parts(store=SqliteStore(tmp_path / "s.db"), hsm=hsm))
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }

    documented = {(method, path) for method, path, _ in _operations(spec)}

    assert documented == served


@pytest.mark.parametrize(("server_name", "spec_name"), sorted(BODY_SCHEMAS.items()))
def test_body_schema_equals_the_one_the_server_validates_with(
    spec: dict[str, Any], server_name: str, spec_name: str
) -> None:
    documented = _without_annotations(_schema(spec, spec_name))

    assert documented == SCHEMAS[server_name]


def test_every_server_body_schema_is_documented() -> None:
    assert set(BODY_SCHEMAS) == set(SCHEMAS)


def _csc_as_validated(documented: dict[str, Any]) -> dict[str, Any]:
    """A documented CSC body as the server validates it: server/csc_api.py
    renames v1.0.4 fields (``hash``, ``hashAlgo``) to v2's and turns
    ``PIN``/``OTP`` into ``authData`` items first, refusing a body with
    both spellings of one field. Each alias must be documented with the
    schema of what it stands for, both spellings must be excluded by
    ``not``, and a required field may be given in either spelling
    (``anyOf``); the rest must be the server's schema exactly."""
    schema = copy.deepcopy(_without_annotations(documented))
    properties = schema["properties"]
    both: list[dict[str, Any]] = []
    either: list[str] = []
    for old, new in CSC_V1_NAMES.items():
        if old in properties:
            assert properties.pop(old) == properties[new], old
            both.append({"required": [new, old]})
            if {"required": [new]} in schema.get("anyOf", []):
                either.append(new)
    for name in CSC_FACTORS:
        if name in properties:
            value = properties["authData"]["items"]["properties"]["value"]
            assert properties.pop(name) == value, name
            both.append({"required": ["authData", name]})
    if both:
        assert schema.pop("not") == {"anyOf": both}
    if either:
        alternatives = schema.pop("anyOf")
        assert alternatives == [
            {"required": [n]} for new in either for n in (new, _v1_name(new))
        ]
        schema["required"] = schema["required"] + either
    if "required" in schema:
        schema["required"] = sorted(schema["required"])
    return schema


def _v1_name(name: str) -> str:
    return {new: old for old, new in CSC_V1_NAMES.items()}[name]


@pytest.mark.parametrize(("method", "spec_name"), sorted(CSC_BODY_SCHEMAS.items()))
def test_csc_body_schema_is_the_one_the_server_validates_with(
    spec: dict[str, Any], method: str, spec_name: str
) -> None:
    server = copy.deepcopy(CSC_SCHEMAS[method])
    if "required" in server:
        server["required"] = sorted(server["required"])

    assert _csc_as_validated(_schema(spec, spec_name)) == server


def test_csc_bodies_document_the_v1_names_wherever_the_server_takes_them(
    spec: dict[str, Any],
) -> None:
    for method, spec_name in CSC_BODY_SCHEMAS.items():
        documented = _schema(spec, spec_name)["properties"]
        validated = CSC_SCHEMAS[method]["properties"]
        aliases = {old for old, new in CSC_V1_NAMES.items() if new in validated}
        if "authData" in validated:
            aliases.update(CSC_FACTORS)
        assert aliases <= set(documented), method


def test_every_csc_body_schema_is_documented() -> None:
    assert set(CSC_BODY_SCHEMAS) == set(CSC_SCHEMAS)


def test_operations_with_a_body_use_the_validated_schemas(
    spec: dict[str, Any],
) -> None:
    expected = {
        ("POST", "/api/v1/users"): "CreateUserBody",
        ("POST", "/api/v1/signature-requests"): "CreateSignatureRequestBody",
        ("POST", "/device/v1/enrolment"): "EnrolmentBody",
        ("POST", "/device/v1/requests/{request_id}/approve"): "ApprovalBody",
        ("POST", "/device/v1/requests/{request_id}/reject"): "SadBody",
    }
    expected.update(
        {
            ("POST", f"/csc/v{version}/{method}"): name
            for version in (1, 2)
            for method, name in CSC_BODY_SCHEMAS.items()
        }
    )

    found = {
        (method, path): operation["requestBody"]["content"]["application/json"][
            "schema"
        ]["$ref"].rsplit("/", 1)[-1]
        for method, path, operation in _operations(spec)
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    }

    assert found == expected


def test_token_endpoint_takes_the_form_fields_and_scopes_it_serves(
    spec: dict[str, Any],
) -> None:
    forms = {
        (method, path)
        for method, path, operation in _operations(spec)
        if "application/x-www-form-urlencoded"
        in operation.get("requestBody", {}).get("content", {})
    }
    operation = spec["paths"][TOKEN_PATH]["post"]
    body = operation["requestBody"]["content"]["application/x-www-form-urlencoded"]
    flow = spec["components"]["securitySchemes"]["OAuth2"]["flows"]

    assert forms == {("POST", TOKEN_PATH)}
    assert set(_resolve(spec, body["schema"])["properties"]) == {
        "grant_type",
        "scope",
        "client_id",
        "client_secret",
    }
    assert flow["clientCredentials"]["tokenUrl"] == TOKEN_PATH
    assert set(flow["clientCredentials"]["scopes"]) == set(SCOPES)


def test_client_request_schema_names_the_fields_of_request_for_client(
    spec: dict[str, Any],
) -> None:
    schema = _schema(spec, "ClientSignatureRequest")
    fullest = request_for_client(_signed_request(), _credential())
    barest = request_for_client(_pending_request(), None)

    assert set(schema["properties"]) == set(fullest)
    assert set(schema["required"]) == set(barest)


def test_device_request_schema_names_the_fields_of_request_for_device(
    spec: dict[str, Any],
) -> None:
    schema = _schema(spec, "DeviceSignatureRequest")
    request = _pending_request()
    choices = code_choices(
        secret=b"s", right=request.verification_code, nonce=request.nonce
    )
    view = request_for_device(
        request,
        choices=choices,
        audience="sigil",
        relying_party="Portal",
        second_factor="pin",
    )

    assert set(schema["properties"]) == set(view)
    assert set(schema["required"]) == set(view)
    codes = schema["properties"]["verification_codes"]
    assert codes["minItems"] == codes["maxItems"] == len(choices)


def test_user_schema_names_the_fields_of_user_view(spec: dict[str, Any]) -> None:
    schema = _schema(spec, "User")
    user = User(
        user_id="alice",
        display_name="Alice Example",
        key_algorithm="EC-P256",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    view = user_view(user)

    assert set(schema["properties"]) == set(view)
    assert set(schema["required"]) == set(view)
    key_algorithms = schema["properties"]["key_algorithm"]["enum"]
    assert (
        key_algorithms == SCHEMAS["create_user"]["properties"]["key_algorithm"]["enum"]
    )
    policies = SCHEMAS["create_user"]["properties"]["second_factor"]["enum"]
    assert schema["properties"]["second_factor"]["enum"] == policies


def test_request_state_enum_lists_every_state(spec: dict[str, Any]) -> None:
    states = _schema(spec, "RequestState")["enum"]

    assert states == [str(state) for state in RequestState]


def test_wait_parameter_is_bounded_by_the_long_poll_maximum(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    operation = spec["paths"]["/api/v1/signature-requests/{request_id}"]["get"]
    (wait,) = [p for p in operation["parameters"] if p.get("name") == "wait"]

    assert wait["in"] == "query"
    assert wait["schema"]["minimum"] == 0
    assert wait["schema"]["maximum"] == Settings(home=tmp_path).long_poll_max


def test_every_error_answer_is_the_error_schema(spec: dict[str, Any]) -> None:
    wrong: list[str] = []
    for method, path, operation in _operations(spec):
        for status, answer in operation["responses"].items():
            if int(status) < 400:
                continue
            answer = _resolve(spec, answer)
            schema = answer["content"]["application/json"]["schema"]
            if schema != {"$ref": "#/components/schemas/Error"}:
                wrong.append(f"{method} {path} {status}")

    assert wrong == []


def test_every_operation_can_answer_an_unexpected_failure(
    spec: dict[str, Any],
) -> None:
    missing = [
        f"{method} {path}"
        for method, path, operation in _operations(spec)
        if "500" not in operation["responses"]
    ]

    assert missing == []


def _self_signed() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Alice Example")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(Encoding.DER)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("factor", ["none", "pin", "totp"])
def test_csc_credential_info_schema_names_the_fields_of_credential_info(
    spec: dict[str, Any], version: int, factor: str
) -> None:
    schema = _schema(spec, "CscCredentialInfo")
    der = _self_signed()
    credential = Credential(
        credential_id="c-1",
        user_id="alice",
        key_id="k-1",
        key_algorithm="EC-P256",
        certificate_der=der,
        chain_der=(der, der),
        status="active",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    user = User(
        user_id="alice",
        display_name="Alice Example",
        key_algorithm="EC-P256",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        second_factor=factor,
    )
    fullest = credential_info(
        credential,
        user,
        version=version,
        certificates="chain",
        cert_info=True,
        auth_info=True,
        multisign=32,
        now=datetime.now(UTC),
    )
    barest = credential_info(
        credential,
        user,
        version=version,
        certificates="none",
        cert_info=False,
        auth_info=False,
        multisign=32,
        now=datetime.now(UTC),
    )

    properties = schema["properties"]
    assert set(fullest) <= set(properties)
    assert set(schema["required"]) <= set(barest)
    for part in ("key", "cert"):
        assert set(fullest[part]) <= set(properties[part]["properties"]), part
        assert set(properties[part]["required"]) <= set(barest[part]), part
    for name in ("PIN", "OTP", "auth"):
        if name in fullest:
            assert set(fullest[name]) <= set(properties[name]["properties"]), name


def test_csc_pending_authorisation_schema_names_the_fields_of_its_answer(
    spec: dict[str, Any],
) -> None:
    schema = _schema(spec, "CscPendingAuthorization")
    answer = csc_pending(_pending_request())

    assert set(schema["properties"]) == set(schema["required"]) == set(answer)
