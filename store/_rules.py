"""Checks every backend applies before it touches the database.

Keeping them here means the SQLite and MongoDB backends refuse the same
inputs with the same errors, which the shared contract tests rely on
(STATE-2).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from store.models import RequestState

__all__ = [
    "STALE_APPROVAL_ERROR",
    "UPDATABLE_FIELDS",
    "check_aware",
    "check_limit",
    "check_transition",
    "check_updates",
]

# Written to ``error`` when crash recovery fails an approved request (STATE-3).
STALE_APPROVAL_ERROR = "signing_interrupted"

UPDATABLE_FIELDS = frozenset({"signatures", "sad_digest", "error"})


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
        elif value is not None and not isinstance(value, str):
            raise ValueError(f"{key} must be a str or None")
        result[key] = value
    return result
