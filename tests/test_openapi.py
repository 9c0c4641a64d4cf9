"""docs/openapi.yaml describes the server as it is: its routes, the JSON
Schemas it validates bodies with and the fields its views produce."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from hsm import Hsm
from sam import code_choices
from server.app import Parts, create_app
from server.config import Settings
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
