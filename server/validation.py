"""Request bodies: read, parse and validate with JSON Schema (INPUT-1).

Error descriptions name the field and the rule, never the value, so that a
secret sent in the wrong place is not echoed back (SAD-6).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

from aiohttp import web
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from server.errors import ApiError

__all__ = [
    "OPERATOR_SCHEMAS",
    "SCHEMAS",
    "check_body",
    "decode_json",
    "parse_json",
    "read_json",
    "validate",
]

_PLAIN = re.compile(r"[A-Za-z0-9_]{1,40}")
_B64 = r"^[A-Za-z0-9+/]*={0,2}$"
_B64URL = r"^[A-Za-z0-9_-]+$"
_ID = r"^[A-Za-z0-9][A-Za-z0-9._@:-]*$"
# A signer's PIN (4 to 12 digits) and a TOTP code (6 to 8 digits), AUTH-3.
_PIN: dict[str, Any] = {
    "type": "string",
    "minLength": 4,
    "maxLength": 12,
    "pattern": "^[0-9]{4,12}$",
}
_OTP: dict[str, Any] = {
    "type": "string",
    "minLength": 6,
    "maxLength": 8,
    "pattern": "^[0-9]{6,8}$",
}
_SAD: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 16384}

SCHEMAS: dict[str, dict[str, Any]] = {
    "create_user": {
        "type": "object",
        "additionalProperties": False,
        "required": ["display_name"],
        "properties": {
            "user_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 64,
                "pattern": _ID,
            },
            "display_name": {"type": "string", "minLength": 1, "maxLength": 64},
            "key_algorithm": {
                "type": "string",
                "enum": ["EC-P256", "EC-P384", "RSA-2048", "RSA-3072"],
            },
            "second_factor": {"type": "string", "enum": ["none", "pin", "totp"]},
        },
    },
    "create_request": {
        "type": "object",
        "additionalProperties": False,
        "required": ["hash_algorithm", "hashes", "display_text"],
        "oneOf": [{"required": ["user_id"]}, {"required": ["credential_id"]}],
        "properties": {
            "user_id": {"type": "string", "minLength": 1, "maxLength": 64},
            "credential_id": {"type": "string", "minLength": 1, "maxLength": 64},
            "hash_algorithm": {"type": "string", "minLength": 1, "maxLength": 64},
            "hashes": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "maxLength": 128, "pattern": _B64},
            },
            "display_text": {"type": "string", "minLength": 1, "maxLength": 200},
            "idempotency_key": {
                "type": "string",
                "minLength": 1,
                "maxLength": 64,
                "pattern": _ID,
            },
            "ttl_seconds": {"type": "integer"},
        },
    },
    "enrol": {
        "type": "object",
        "additionalProperties": False,
        "required": ["activation_code", "challenge", "push_subscription"],
        "properties": {
            "activation_code": {"type": "string", "minLength": 1, "maxLength": 64},
            "challenge": {"type": "string", "minLength": 1, "maxLength": 128},
            "name": {"type": "string", "maxLength": 100},
            "pin": _PIN,
            "push_subscription": {
                "type": "object",
                "additionalProperties": False,
                "required": ["endpoint", "keys"],
                "properties": {
                    "endpoint": {
                        "type": "string",
                        "maxLength": 2048,
                        "pattern": "^https?://",
                    },
                    "expirationTime": {"type": ["number", "null"]},
                    "keys": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["p256dh", "auth"],
                        "properties": {
                            "p256dh": {
                                "type": "string",
                                "maxLength": 128,
                                "pattern": _B64URL,
                            },
                            "auth": {
                                "type": "string",
                                "maxLength": 64,
                                "pattern": _B64URL,
                            },
                        },
                    },
                },
            },
        },
    },
    "sad": {
        "type": "object",
        "additionalProperties": False,
        "required": ["sad"],
        "properties": {"sad": _SAD},
    },
    "approve": {
        "type": "object",
        "additionalProperties": False,
        "required": ["sad"],
        "properties": {"sad": _SAD, "pin": _PIN, "otp": _OTP},
    },
}

# Bodies the command line checks with the same rules; no HTTP route takes them.
OPERATOR_SCHEMAS: dict[str, dict[str, Any]] = {
    "create_client": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "client_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 64,
                "pattern": _ID,
            },
        },
    },
}

_VALIDATORS = {
    name: Draft202012Validator(schema)
    for name, schema in {**SCHEMAS, **OPERATOR_SCHEMAS}.items()
}

_RULES = {
    "type": "has the wrong type",
    "required": "is missing a required field",
    "additionalProperties": "has a field that is not allowed",
    "minLength": "is too short",
    "maxLength": "is too long",
    "minItems": "has too few items",
    "maxItems": "has too many items",
    "pattern": "has characters that are not allowed",
    "enum": "is not one of the allowed values",
    "oneOf": "must name exactly one of the alternatives",
}


def _describe(error: ValidationError) -> str:
    where = "body" + "".join(
        f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
    )
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "a field"
        return f"{where}.{missing} is required"
    if error.validator == "additionalProperties":
        return f"{where} has a field that is not allowed"
    if error.validator == "type":
        return f"{where} must be of type {error.validator_value}"
    if error.validator == "oneOf" and isinstance(error.validator_value, list):
        names = [sorted(s.get("required", [])) for s in error.validator_value]
        return f"{where} must name exactly one of " + " or ".join(
            "/".join(n) for n in names
        )
    return f"{where} {_RULES.get(str(error.validator), 'is invalid')}"


def validate(schema: str, body: Any) -> dict[str, Any]:
    try:
        errors = sorted(
            _VALIDATORS[schema].iter_errors(body), key=lambda e: list(e.absolute_path)
        )
    except RecursionError as e:
        raise ApiError(400, "invalid_request", "the body is nested too deeply") from e
    if errors:
        raise ApiError(400, "invalid_request", _describe(errors[0]))
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "body must be a JSON object")
    return body


async def read_json(request: web.Request, schema: str) -> tuple[bytes, dict[str, Any]]:
    """Read the raw body (its exact bytes are signed) and validate it."""
    raw = await request.read()
    return raw, parse_json(raw, schema)


def parse_json(raw: bytes, schema: str) -> dict[str, Any]:
    if not raw:
        raise ApiError(400, "invalid_request", "the request body is empty")
    return validate(schema, decode_json(raw))


def decode_json(raw: bytes) -> Any:
    """Parse JSON strictly: no NaN, no repeated members, no deep nesting,
    and no text a signer could be misled by (see ``_check_text``)."""
    try:
        body = json.loads(
            raw, parse_constant=_no_constant, object_pairs_hook=_no_duplicates
        )
        _check_text(body, "body")
    except RecursionError as e:
        raise ApiError(400, "invalid_request", "the body is nested too deeply") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "invalid_request", "the body is not valid JSON") from e
    return body


def check_body(schema: str, body: Any) -> dict[str, Any]:
    """Apply the text rules and the schema to an already parsed body."""
    try:
        _check_text(body, "body")
    except RecursionError as e:
        raise ApiError(400, "invalid_request", "the body is nested too deeply") from e
    return validate(schema, body)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two readers of one body must not see two different values: a repeated
    # member is refused rather than resolved (RFC 8259, 4, leaves it open).
    body = dict(pairs)
    if len(body) != len(pairs):
        raise ValueError("a member name is repeated")
    return body


def _no_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (RFC 8259) does not.
    raise ValueError(f"{name} is not JSON")


# Control characters (Unicode category Cc), lone surrogates (left by a
# "\\ud800" escape) and the bidirectional controls, which can make text on
# the phone or in a certificate read differently from what was sent.
_MISLEADING = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


# Beyond ASCII, also format characters (zero-width, soft hyphen, tags,
# interlinear annotations), private-use characters and line or paragraph
# separators: each can hide or reshape what the signer reads. This refuses
# the joiners some scripts use (U+200C, U+200D) as well; plain text to be
# signed does without them.
_HIDDEN = frozenset({"Cc", "Cf", "Co", "Cs", "Zl", "Zp"})

# Letters that show as nothing: the Hangul fillers and the blank braille
# pattern. With unassigned code points and non-characters (category Cn, as
# this Python's Unicode tables know them) they make text look shorter,
# emptier or other than it is.
_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Combining marks (Mn, Me) in a row: enough for any script's accents and
# vowel signs, too few to stack marks over other lines ("Zalgo" text).
_MAX_MARKS = 4
_MARKS = frozenset({"Mn", "Me"})


def _check_text(value: Any, where: str) -> None:
    """Refuse strings a signer could be misled by, and ones that are not
    Unicode at all (lone surrogates from ``\\ud800`` escapes)."""
    if isinstance(value, str):
        if _MISLEADING.search(value) or (
            not value.isascii()
            and any(unicodedata.category(c) in _HIDDEN for c in value)
        ):
            raise ApiError(
                400,
                "invalid_request",
                f"{where} contains control, surrogate or direction characters",
            )
        if not value.isascii():
            _check_letters(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where)
            _check_text(item, f"{where}.{key}" if _PLAIN.fullmatch(key) else where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_text(item, f"{where}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ApiError(400, "invalid_request", f"{where} is not a finite number")


def _check_letters(value: str, where: str) -> None:
    """Refuse unassigned, non-character and blank filler code points, and
    more than ``_MAX_MARKS`` combining marks in a row."""
    marks = 0
    for c in value:
        category = unicodedata.category(c)
        if category == "Cn" or c in _BLANK:
            raise ApiError(
                400,
                "invalid_request",
                f"{where} contains unassigned, non-character or blank filler "
                "characters",
            )
        marks = marks + 1 if category in _MARKS else 0
        if marks > _MAX_MARKS:
            raise ApiError(
                400,
                "invalid_request",
                f"{where} contains more than {_MAX_MARKS} combining marks in a row",
            )
