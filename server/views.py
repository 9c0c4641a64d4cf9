"""JSON shapes of the records the API returns."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from hsm import HashAlg, signature_algorithm_oid
from sam import mechanism_for
from store import Credential, SignatureRequest, User

__all__ = ["b64", "iso", "request_for_client", "request_for_device", "user_view"]


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def user_view(user: User) -> dict[str, Any]:
    return {
        "user_id": user.user_id,
        "display_name": user.display_name,
        "key_algorithm": user.key_algorithm,
        "second_factor": user.second_factor,
        "created_at": iso(user.created_at),
    }


def request_for_client(
    request: SignatureRequest, credential: Credential | None
) -> dict[str, Any]:
    view: dict[str, Any] = {
        "request_id": request.request_id,
        "state": str(request.state),
        "user_id": request.user_id,
        "credential_id": request.credential_id,
        "hash_algorithm": request.hash_algorithm,
        "hashes": list(request.hashes),
        "display_text": request.display_text,
        "verification_code": request.verification_code,
        "created_at": iso(request.created_at),
        "expires_at": iso(request.expires_at),
    }
    if request.idempotency_key is not None:
        view["idempotency_key"] = request.idempotency_key
    if request.error is not None:
        view["error"] = request.error
    if request.finished_at is not None:
        view["finished_at"] = iso(request.finished_at)
    if request.signatures is not None and credential is not None:
        mechanism = mechanism_for(credential.key_algorithm)
        view["signatures"] = list(request.signatures)
        view["signature_algorithm"] = signature_algorithm_oid(
            mechanism, HashAlg.from_name(request.hash_algorithm)
        )
        view["certificate_chain"] = [b64(c) for c in credential.chain_der]
    return view


def request_for_device(
    request: SignatureRequest,
    *,
    choices: tuple[str, ...],
    audience: str,
    relying_party: str,
    second_factor: str = "none",
) -> dict[str, Any]:
    """The request as the signer's phone sees it; ``second_factor`` names
    what the approval must carry besides the SAD: ``"none"``, ``"pin"`` or
    ``"totp"`` (a one-time code)."""
    return {
        "request_id": request.request_id,
        "state": str(request.state),
        "credential_id": request.credential_id,
        "hash_algorithm": request.hash_algorithm,
        "hashes": list(request.hashes),
        "display_text": request.display_text,
        "nonce": request.nonce,
        "verification_codes": list(choices),
        "audience": audience,
        "relying_party": relying_party,
        "second_factor": second_factor,
        "created_at": iso(request.created_at),
        "expires_at": iso(request.expires_at),
    }
