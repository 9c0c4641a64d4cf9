"""The Cloud Signature Consortium API: ``/csc/v2/`` and ``/csc/v1/``.

Standard signing clients (pyHanko, EU DSS, commercial tools) sign through
these. Approval stays on the signer's phone, as the spec's asynchronous
authorisation: ``credentials/authorize`` pushes the hashes to the phone and
answers 202 with a ``handle`` (and the verification code the client shows
the signer); ``credentials/authorizeCheck`` answers 202 while the signer has
not decided and 200 with the SAD once the phone's approval passed the SAM.
That SAD is an opaque token of this server (sam/authorisation.py), spent by
``signatures/signHash`` one hash at a time at most, never past the number
of signatures approved, never after it expires.

Both versions take both spellings of the renamed fields (v1.0.4 ``hash``,
``hashAlgo``, ``PIN``, ``OTP``; v2 ``hashes``, ``hashAlgorithmOID``,
``authData``), so a v1 client such as pyHanko works on either path. Errors
are an HTTP status with ``{"error", "error_description"}`` in the spec's
words. Relying apps authenticate with an OAuth2 client-credentials token
(scope ``service`` for the credential listing, ``credential`` for
authorising and signing) or their API key.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from jsonschema import Draft202012Validator, ValidationError, validators

from hsm import HashAlg, KeyType
from sam import (
    ActivationError,
    AuthorisationExpired,
    AuthorisationSpent,
    CredentialUnusable,
    HashAlreadySigned,
    HashNotAuthorised,
    InvalidAuthorisation,
    SignAlgorithmMismatch,
    SigningFailed,
    TooManySignatures,
)
from sam.factors import FactorRefused
from server.config import Settings
from server.csc import CscError, credential_info, sign_algorithm
from server.errors import ApiError
from server.service import Service
from server.state import CLIENT_AUTH, SERVICE
from server.validation import decode_json
from store import CSC, Client, Credential, RequestState, SignatureRequest, User

__all__ = ["routes"]

log = logging.getLogger(__name__)

SERVICE_SCOPE = "service"
CREDENTIAL_SCOPE = "credential"

_METHODS = [
    "info",
    "credentials/list",
    "credentials/info",
    "credentials/authorize",
    "credentials/authorizeCheck",
    "credentials/extendTransaction",
    "signatures/signHash",
]
_SPECS = {1: "1.0.4.0", 2: "2.0.0.2"}
# v1.0.4 names of fields that v2 renamed.
_V1_NAMES = {"hash": "hashes", "hashAlgo": "hashAlgorithmOID"}
_V2_TO_V1 = {v: k for k, v in _V1_NAMES.items()}

_ID = {"type": "string", "minLength": 1, "maxLength": 128}
_B64_LIST = {
    "type": "array",
    "minItems": 1,
    "maxItems": 100,
    "items": {"type": "string", "minLength": 1, "maxLength": 200},
}
_CERTIFICATES = {"type": "string", "enum": ["none", "single", "chain"]}
_SCHEMAS: dict[str, dict[str, Any]] = {
    "info": {"type": "object", "properties": {"lang": {"type": "string"}}},
    "credentials/list": {
        "type": "object",
        "properties": {
            "userID": _ID,
            "maxResults": {"type": "integer", "minimum": 1, "maximum": 1000},
            "credentialInfo": {"type": "boolean"},
            "certificates": _CERTIFICATES,
            "certInfo": {"type": "boolean"},
            "authInfo": {"type": "boolean"},
            "onlyValid": {"type": "boolean"},
        },
    },
    "credentials/info": {
        "type": "object",
        "required": ["credentialID"],
        "properties": {
            "credentialID": _ID,
            "certificates": _CERTIFICATES,
            "certInfo": {"type": "boolean"},
            "authInfo": {"type": "boolean"},
        },
    },
    "credentials/authorize": {
        "type": "object",
        "required": ["credentialID", "numSignatures"],
        "properties": {
            "credentialID": _ID,
            "numSignatures": {"type": "integer", "minimum": 1},
            "hashes": _B64_LIST,
            "hashAlgorithmOID": {"type": "string", "maxLength": 64},
            "authData": {
                "type": "array",
                "maxItems": 4,
                "items": {
                    "type": "object",
                    "required": ["id"],
                    "properties": {
                        "id": {"type": "string", "maxLength": 32},
                        "value": {"type": "string", "maxLength": 64},
                    },
                },
            },
            "description": {"type": "string", "maxLength": 500},
            "clientData": {"type": "string", "maxLength": 2000},
        },
    },
    "credentials/authorizeCheck": {
        "type": "object",
        "required": ["handle"],
        "properties": {"handle": _ID},
    },
    "credentials/extendTransaction": {
        "type": "object",
        "required": ["credentialID", "SAD"],
        "properties": {
            "credentialID": _ID,
            "SAD": {"type": "string", "minLength": 1, "maxLength": 200},
            "hashes": _B64_LIST,
            "hashAlgorithmOID": {"type": "string", "maxLength": 64},
        },
    },
    "signatures/signHash": {
        "type": "object",
        "required": ["credentialID", "SAD", "hashes", "signAlgo"],
        "properties": {
            "credentialID": _ID,
            "SAD": {"type": "string", "minLength": 1, "maxLength": 200},
            "hashes": _B64_LIST,
            "hashAlgorithmOID": {"type": "string", "maxLength": 64},
            "signAlgo": {"type": "string", "minLength": 1, "maxLength": 64},
            "signAlgoParams": {"type": "string", "minLength": 1, "maxLength": 1000},
            "operationMode": {"type": "string"},
            "clientData": {"type": "string", "maxLength": 2000},
        },
    },
}


def _is_integer(checker: Any, instance: Any) -> bool:
    # JSON Schema counts 1.0 as an integer; the CSC API does not, and a
    # count of signatures must not reach the phone as "1.0".
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator: type[Draft202012Validator] = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)
_VALIDATORS = {name: _Validator(s) for name, s in _SCHEMAS.items()}
_TYPE_WORDS = {"array": "array", "integer": "integer", "boolean": "boolean"}

# What a refusal of the SAM is called in the CSC API.
_SPEND_ERRORS: dict[type[ActivationError], str] = {
    InvalidAuthorisation: "Invalid parameter SAD",
    AuthorisationExpired: "SAD expired",
    AuthorisationSpent: "SAD expired: every signature it authorised was made",
    HashNotAuthorised: "Hash is not authorized by the SAD",
    HashAlreadySigned: "Hash is not authorized by the SAD: it was signed already",
    TooManySignatures: "Numbers of signatures is too high",
    SignAlgorithmMismatch: "Invalid parameter signAlgo",
    CredentialUnusable: "The credential identified by credentialID is disabled",
}

# The authData id each second-factor policy asks for (None: no factor), and
# why any other id is refused.
_ASKED = {"none": None, "pin": "PIN", "totp": "OTP"}
_UNASKED = {
    "none": "the signer's policy asks for no PIN or OTP",
    "pin": "the signer's policy asks for a PIN, not an OTP",
    "totp": "the signer's policy asks for an OTP, not a PIN",
}

Handler = Callable[[web.Request, Service, Client, dict[str, Any], int], Awaitable[Any]]


def _parameter(name: str, version: int) -> str:
    return _V2_TO_V1.get(name, name) if version == 1 else name


def _field(error: ValidationError) -> str:
    path = [p for p in error.absolute_path if isinstance(p, str)]
    if path:
        return path[0]
    if error.validator == "required" and "'" in error.message:
        return error.message.split("'")[1]
    return ""


def _describe(error: ValidationError, version: int) -> str:
    path = [p for p in error.absolute_path if isinstance(p, str)]
    if error.validator == "required":
        name = error.message.split("'")[1] if "'" in error.message else "?"
        schema = error.schema if isinstance(error.schema, dict) else {}
        schema_type = schema.get("properties", {}).get(name, {}).get("type")
        word = _TYPE_WORDS.get(str(schema_type), "string")
        return f"Missing (or invalid type) {word} parameter {_parameter(name, version)}"
    name = _parameter(path[0], version) if path else "body"
    if error.validator == "type" and len(path) == 1:
        word = _TYPE_WORDS.get(str(error.validator_value), "string")
        return f"Missing (or invalid type) {word} parameter {name}"
    return f"Invalid parameter {name}"


def _read_body(raw: bytes, method: str, version: int) -> dict[str, Any]:
    body = decode_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise CscError("The request body must be a JSON object")
    # One spelling per field: either version's name, never both.
    for old, new in _V1_NAMES.items():
        if old in body:
            if new in body:
                raise CscError(f"Invalid parameter {old}: {new} is given too")
            body[new] = body.pop(old)
    factors = [
        {"id": name, "value": body.pop(name)} for name in ("PIN", "OTP") if name in body
    ]
    if factors:
        if "authData" in body:
            raise CscError("Invalid parameter authData: PIN or OTP is given too")
        body["authData"] = factors
    order = list(_SCHEMAS[method].get("properties", {}))

    def field_first(error: ValidationError) -> int:
        # The first field in the spec's order is reported first.
        name = _field(error)
        return order.index(name) if name in order else len(order)

    errors = sorted(_VALIDATORS[method].iter_errors(body), key=field_first)
    if errors:
        raise CscError(_describe(errors[0], version))
    return body


def _endpoint(
    method: str, scope: str | None
) -> Callable[[Handler], Callable[[web.Request, int], Awaitable[web.StreamResponse]]]:
    """Wrap a handler: authenticate, parse, answer JSON, speak CSC errors."""

    def wrap(
        handler: Handler,
    ) -> Callable[[web.Request, int], Awaitable[web.StreamResponse]]:
        @functools.wraps(handler)
        async def run(request: web.Request, version: int) -> web.StreamResponse:
            service = request.app[SERVICE]
            try:
                client = (
                    await request.app[CLIENT_AUTH].verify(request, scope=scope)
                    if scope is not None
                    else None
                )
                body = _read_body(await request.read(), method, version)
                answer = await handler(request, service, client, body, version)  # type: ignore[arg-type]
            except CscError as e:
                description = e.description
                if version == 1:
                    for new, old in _V2_TO_V1.items():
                        description = description.replace(
                            f"parameter {new}", f"parameter {old}"
                        )
                raise ApiError(e.status, e.error, description) from None
            if isinstance(answer, web.StreamResponse):
                return answer
            return web.json_response(answer, headers={"Cache-Control": "no-store"})

        return run

    return wrap


def _owned_by(user: User, client: Client) -> bool:
    """A relying app uses the credentials of users it created, and of users
    the operator created (as in the relying-party API)."""
    return user.created_by in ("operator", f"client:{client.client_id}")


async def _credential(
    service: Service, client: Client, credential_id: str
) -> tuple[Credential, User]:
    credential = await service.sam.credential(credential_id)
    user = (
        None if credential is None else await service.store.get_user(credential.user_id)
    )
    if credential is None or user is None or not _owned_by(user, client):
        # Another relying app's credential looks exactly like no credential.
        raise CscError("Invalid parameter credentialID")
    return credential, user


async def _credential_of(
    service: Service, client: Client, credential_id: str
) -> Credential:
    """As ``_credential``, from memory: who created a user never changes."""
    credential = await service.sam.credential(credential_id)
    owner = (
        None if credential is None else await service.user_creator(credential.user_id)
    )
    if credential is None or owner not in ("operator", f"client:{client.client_id}"):
        raise CscError("Invalid parameter credentialID")
    return credential


def _hashes(
    values: list[str], hash_alg: HashAlg | None
) -> tuple[tuple[str, ...], HashAlg]:
    """Decode and re-encode each base64 hash; infer the digest from its size
    when no hash algorithm was named (v1.0.4 authorize names none)."""
    raw: list[bytes] = []
    for value in values:
        try:
            raw.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError) as e:
            raise CscError("Invalid Base64 hash string parameter") from e
    if hash_alg is None:
        sizes = {len(r) for r in raw}
        by_size = {alg.digest_size: alg for alg in HashAlg}
        if len(sizes) != 1 or next(iter(sizes)) not in by_size:
            raise CscError("Invalid digest value length")
        hash_alg = by_size[sizes.pop()]
    if any(len(r) != hash_alg.digest_size for r in raw):
        raise CscError("Invalid digest value length")
    return tuple(base64.b64encode(r).decode("ascii") for r in raw), hash_alg


def _hash_alg(oid: str | None) -> HashAlg | None:
    if oid is None:
        return None
    for alg in HashAlg:
        if alg.oid == oid:
            return alg
    raise CscError("Invalid parameter hashAlgorithmOID")


def _auth_data(body: dict[str, Any]) -> dict[str, str | None]:
    """``authData`` (or v1.0.4 ``PIN``/``OTP``) by id: each id known, once."""
    given: dict[str, str | None] = {}
    for item in body.get("authData", []):
        name = item["id"]
        if name not in ("PIN", "OTP"):
            raise CscError("Invalid parameter authData")
        if name in given:
            raise CscError(f"Invalid parameter authData: {name} is given twice")
        given[name] = item.get("value")
    return given


def _check_asked(user: User, given: dict[str, str | None]) -> None:
    """Refuse a PIN or OTP the signer's policy does not ask for, as the
    device API does: it is checked nowhere, so it must not seem accepted."""
    policy = user.second_factor
    for name in given:
        if name != _ASKED.get(policy):
            reason = _UNASKED.get(policy, "the signer's policy asks for no such data")
            raise CscError(f"Invalid parameter {name}: {reason}")


def _public_url(settings: Settings) -> str:
    """Where clients reach this server: ``server.public_url``, else the
    address it listens on; never the request's Host header."""
    if settings.public_url:
        return settings.public_url
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"http://{host}:{settings.port}"


def _seconds_left(until: datetime | None) -> int:
    if until is None:
        return 0
    return max(0, int((until - datetime.now(UTC)).total_seconds()))


# -- the methods ------------------------------------------------------------


@_endpoint("info", scope=None)
async def _info(
    request: web.Request,
    service: Service,
    client: Client | None,
    body: dict[str, Any],
    version: int,
) -> dict[str, Any]:
    return {
        "specs": _SPECS[version],
        "name": "Sigil",
        "region": "EU",
        "lang": "en-US",
        "description": "Remote signing with approval on the signer's phone",
        "authType": ["oauth2client"],
        "oauth2": _public_url(service.settings),
        "methods": _METHODS,
    }


@_endpoint("credentials/list", scope=SERVICE_SCOPE)
async def _list(
    request: web.Request,
    service: Service,
    client: Client,
    body: dict[str, Any],
    version: int,
) -> dict[str, Any]:
    # TODO(csc-paging): every credential of the app is listed in one answer;
    # pageToken and nextPageToken are not implemented.
    users = {
        u.user_id: u
        for u in await service.store.list_users()
        if _owned_by(u, client)
        and ("userID" not in body or u.user_id == body["userID"])
    }
    credentials = [
        c
        for c in await service.store.list_credentials()
        if c.user_id in users and (not body.get("onlyValid") or c.status == "active")
    ][: body.get("maxResults", 1000)]
    answer: dict[str, Any] = {"credentialIDs": [c.credential_id for c in credentials]}
    if version == 2 and body.get("credentialInfo"):
        now = datetime.now(UTC)
        answer["credentialInfos"] = [
            {
                "credentialID": c.credential_id,
                **credential_info(
                    c,
                    users[c.user_id],
                    version=2,
                    certificates=body.get("certificates", "single"),
                    cert_info=bool(body.get("certInfo")),
                    auth_info=bool(body.get("authInfo")),
                    multisign=service.settings.csc_multisign,
                    now=now,
                ),
            }
            for c in credentials
        ]
    return answer


@_endpoint("credentials/info", scope=SERVICE_SCOPE)
async def _credential_info(
    request: web.Request,
    service: Service,
    client: Client,
    body: dict[str, Any],
    version: int,
) -> dict[str, Any]:
    credential, user = await _credential(service, client, body["credentialID"])
    return credential_info(
        credential,
        user,
        version=version,
        certificates=body.get("certificates", "single"),
        cert_info=bool(body.get("certInfo")),
        auth_info=bool(body.get("authInfo", version == 1)),
        multisign=service.settings.csc_multisign,
        now=datetime.now(UTC),
    )


@_endpoint("credentials/authorize", scope=CREDENTIAL_SCOPE)
async def _authorize(
    request: web.Request,
    service: Service,
    client: Client,
    body: dict[str, Any],
    version: int,
) -> web.Response:
    given = _auth_data(body)
    credential, user = await _credential(service, client, body["credentialID"])
    if credential.status != "active":
        raise CscError("The credential identified by credentialID is disabled")
    count = body["numSignatures"]
    if count > service.settings.csc_multisign:
        raise CscError("Numbers of signatures is too high")
    if "hashes" not in body:
        # SCAL 2: the signer approves the very hashes, so they come now.
        raise CscError(
            f"Missing (or invalid type) array parameter {_parameter('hashes', version)}"
        )
    hashes, hash_alg = _hashes(body["hashes"], _hash_alg(body.get("hashAlgorithmOID")))
    if len(set(hashes)) != len(hashes):
        raise CscError(f"Invalid parameter {_parameter('hashes', version)}")
    if count != len(hashes):
        raise CscError(
            "Invalid value for parameter numSignatures: it must equal the number "
            "of hashes"
        )

    _check_asked(user, given)
    # TODO(factor-lockout-dos): the attempt slots are the signer's, shared by
    # every relying app that may use the credential (operator-created users
    # are shared), so one app's wrong PINs can lock the signer for all of
    # them until the slots expire or the operator unlocks.
    try:
        await service.factors.check(
            user, pin=given.get("PIN"), otp=given.get("OTP"), now=datetime.now(UTC)
        )
    except FactorRefused as e:
        if e.reason == "locked":
            raise CscError("Credential locked") from None
        if e.reason == "missing":
            raise CscError(f"Missing authentication data: {e.factor.upper()}") from None
        raise CscError(
            "The authentication data is invalid", error="invalid_authentication_data"
        ) from None

    text = (body.get("description") or "").strip() or (
        f"Approve {count} signature{'s' if count > 1 else ''} for "
        f"{await service.client_name(client.client_id)}"
    )
    created, _ = await service.open_request(
        client,
        credential,
        hash_alg=hash_alg,
        hashes=hashes,
        display_text=text,
        ttl=service.settings.default_ttl,
        kind=CSC,
    )
    log.debug("CSC authorisation %s waits for the phone", created.request_id)
    return web.json_response(
        _pending(created), status=202, headers={"Cache-Control": "no-store"}
    )


def _pending(request: SignatureRequest) -> dict[str, Any]:
    return {
        "handle": request.request_id,
        # Shown to the signer by the client: the phone asks them to pick it.
        "verificationCode": request.verification_code,
        "expiresIn": _seconds_left(request.expires_at),
    }


_DECIDED = {
    RequestState.REJECTED: ("access_denied", "The signer declined on the phone"),
    RequestState.FAILED: (
        "access_denied",
        "The authorization failed: the signer picked another verification code",
    ),
    RequestState.EXPIRED: ("invalid_request", "The authorization expired"),
    RequestState.CANCELLED: ("invalid_request", "The authorization was cancelled"),
    RequestState.SIGNED: (
        "invalid_request",
        "The authorization was used up: every signature it allowed was made",
    ),
}


@_endpoint("credentials/authorizeCheck", scope=CREDENTIAL_SCOPE)
async def _authorize_check(
    request: web.Request,
    service: Service,
    client: Client,
    body: dict[str, Any],
    version: int,
) -> web.Response | dict[str, Any]:
    found = await service.store.get_request(body["handle"])
    if found is None or found.kind != CSC or found.client_id != client.client_id:
        raise CscError("Invalid parameter handle")
    current = await service.current(found)
    if current.state is RequestState.PENDING:
        return web.json_response(
            _pending(current), status=202, headers={"Cache-Control": "no-store"}
        )
    if current.state is RequestState.APPROVED:
        if current.authorized_until is None or current.authorized_until <= datetime.now(
            UTC
        ):
            raise CscError("The authorization expired")
        return {
            "SAD": service.sam.authorisation_token(current),
            "expiresIn": _seconds_left(current.authorized_until),
        }
    error, description = _DECIDED[current.state]
    raise CscError(description, error=error)


@_endpoint("credentials/extendTransaction", scope=CREDENTIAL_SCOPE)
async def _extend(
    request: web.Request,
    service: Service,
    client: Client,
    body: dict[str, Any],
    version: int,
) -> dict[str, Any]:
    credential = await _credential_of(service, client, body["credentialID"])
    try:
        extended = await service.sam.extend_authorisation(
            body["SAD"],
            credential_id=credential.credential_id,
            client_id=client.client_id,
        )
    except ActivationError as e:
        raise CscError(_SPEND_ERRORS.get(type(e), "Invalid parameter SAD")) from None
    return {
        "SAD": service.sam.authorisation_token(extended),
        "expiresIn": _seconds_left(extended.authorized_until),
    }


@_endpoint("signatures/signHash", scope=CREDENTIAL_SCOPE)
async def _sign_hash(
    request: web.Request,
    service: Service,
    client: Client,
    body: dict[str, Any],
    version: int,
) -> dict[str, Any]:
    credential = await _credential_of(service, client, body["credentialID"])
    if body.get("operationMode", "S") != "S":
        # TODO(csc-async-signing): operationMode "A" is not offered.
        raise CscError("Invalid parameter operationMode")
    algorithm = sign_algorithm(
        KeyType(credential.key_algorithm),
        body["signAlgo"],
        body.get("signAlgoParams"),
        body.get("hashAlgorithmOID"),
    )
    hashes, _ = _hashes(body["hashes"], algorithm.hash_alg)
    try:
        signatures = await service.sam.spend_authorisation(
            body["SAD"],
            credential_id=credential.credential_id,
            client_id=client.client_id,
            hashes=hashes,
            hash_alg=algorithm.hash_alg,
            mechanism=algorithm.mechanism,
            pss_salt_length=algorithm.pss_salt_length,
        )
    except SigningFailed:
        raise ApiError(500, "server_error", "the HSM could not sign") from None
    except ActivationError as e:
        log.info("signHash refused for client %s: %s", client.client_id, e.code)
        raise CscError(_SPEND_ERRORS.get(type(e), "Invalid parameter SAD")) from None
    return {"signatures": signatures}


_HANDLERS = {
    "info": _info,
    "credentials/list": _list,
    "credentials/info": _credential_info,
    "credentials/authorize": _authorize,
    "credentials/authorizeCheck": _authorize_check,
    "credentials/extendTransaction": _extend,
    "signatures/signHash": _sign_hash,
}


def _route(
    handler: Callable[[web.Request, int], Awaitable[web.StreamResponse]], version: int
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request) -> web.StreamResponse:
        return await handler(request, version)

    return serve


routes = [
    web.post(f"/csc/v{version}/{method}", _route(handler, version))
    for version in (1, 2)
    for method, handler in _HANDLERS.items()
]
