"""Checks every backend applies before it touches the database.

Keeping them here means the SQLite and MongoDB backends refuse the same
inputs with the same errors, which the shared contract tests rely on
(STATE-2).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from store.models import CSC, RequestState, SignatureRequest

__all__ = [
    "STALE_APPROVAL_ERROR",
    "UPDATABLE_FIELDS",
    "Changes",
    "check_aware",
    "check_limit",
    "check_transition",
    "check_updates",
    "extend_change",
    "reserve_change",
    "signatures_change",
]

#: Fields and new values of a request, by SignatureRequest attribute name.
Changes = dict[str, Any]

# Written to ``error`` when crash recovery fails an approved request (STATE-3).
STALE_APPROVAL_ERROR = "signing_interrupted"

UPDATABLE_FIELDS = frozenset({"signatures", "sad_digest", "error", "authorized_until"})


def check_aware(value: datetime, name: str) -> datetime:
    """Refuse naive datetimes: the store keeps instants, not wall clocks."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value


def check_limit(limit: int) -> int:
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return limit


def check_transition(
    from_states: Collection[RequestState], to_state: RequestState
) -> frozenset[RequestState]:
    """Allow only forward moves (STATE-1).

    Nothing leaves a final state, nothing returns to pending, and a request
    never "moves" to the state it is already in.
    """
    states = frozenset(RequestState(s) for s in from_states)
    to_state = RequestState(to_state)

    final = sorted(s.value for s in states if s.is_final)
    if final:
        raise ValueError(f"a request never leaves a final state: {final}")

    if to_state is RequestState.PENDING:
        raise ValueError("a request never moves back to pending")

    if to_state in states:
        raise ValueError(f"{to_state.value} -> {to_state.value} is not a move")

    return states


def check_updates(updates: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate the fields a transition may set; return them normalised."""
    if not updates:
        return {}

    unknown = sorted(set(updates) - UPDATABLE_FIELDS)
    if unknown:
        raise ValueError(f"transition cannot set {unknown}")

    result: dict[str, Any] = {}
    for key, value in updates.items():
        if key == "signatures":
            if value is not None:
                if not isinstance(value, tuple | list) or not all(
                    isinstance(v, str) for v in value
                ):
                    raise ValueError("signatures must be a sequence of str")
                value = tuple(value)
        elif key == "authorized_until":
            if value is not None:
                if not isinstance(value, datetime):
                    raise ValueError("authorized_until must be a datetime")
                check_aware(value, key)
        elif value is not None and not isinstance(value, str):
            raise ValueError(f"{key} must be a str or None")
        result[key] = value
    return result


# -- CSC authorisations: one approval spent by several signHash calls -----
# Each function looks at the current request and gives the changes to make,
# or None when the step is not allowed; the backend applies them in one
# atomic step, so two callers never spend the same hash or go past the
# number of signatures authorised (SAD-4, SAD-5).


def _spendable(request: SignatureRequest, now: datetime) -> bool:
    return (
        request.kind == CSC
        and request.state is RequestState.APPROVED
        and request.authorized_until is not None
        and request.authorized_until > now
    )


def reserve_change(
    request: SignatureRequest, hashes: Sequence[str], now: datetime
) -> Changes | None:
    """Spend ``hashes`` of the authorisation before the HSM signs them."""
    wanted = list(hashes)
    if not wanted or len(set(wanted)) != len(wanted) or not _spendable(request, now):
        return None
    if any(h not in request.hashes or h in request.used_hashes for h in wanted):
        return None
    if len(request.used_hashes) + len(wanted) > request.num_signatures:
        return None
    return {"used_hashes": (*request.used_hashes, *wanted), "updated_at": now}


def signatures_change(
    request: SignatureRequest,
    hashes: Sequence[str],
    signatures: Sequence[str],
    now: datetime,
) -> Changes | None:
    """Keep the signatures of spent hashes; the last one ends the request."""
    if request.kind != CSC or request.state is not RequestState.APPROVED:
        return None
    if len(hashes) != len(signatures) or not hashes:
        return None
    if any(h not in request.used_hashes or h in request.signed_hashes for h in hashes):
        return None
    signed = (*request.signed_hashes, *hashes)
    changes: Changes = {
        "signed_hashes": signed,
        "signatures": (*(request.signatures or ()), *signatures),
        "updated_at": now,
    }
    if len(signed) >= request.num_signatures:
        changes["state"] = RequestState.SIGNED
        changes["finished_at"] = now
    return changes


def extend_change(
    request: SignatureRequest, until: datetime, now: datetime
) -> Changes | None:
    """Let a live authorisation be spent until ``until`` (never shorten it)."""
    check_aware(until, "until")
    if not _spendable(request, now) or request.authorized_until is None:
        return None
    return {"authorized_until": max(until, request.authorized_until), "updated_at": now}
