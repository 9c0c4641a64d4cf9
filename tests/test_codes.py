"""Verification codes: stable, distinct, and keyed by the server's secret."""

from __future__ import annotations

from sam import code_choices, verification_code


def test_choices_hold_the_right_code_among_distinct_decoys() -> None:
    right = verification_code(
        secret=b"k", request_id="r", nonce="n", hashes=("aGFzaA==",)
    )

    choices = code_choices(secret=b"k", right=right, nonce="n")

    assert right in choices
    assert len(set(choices)) == 3
    assert choices == code_choices(secret=b"k", right=right, nonce="n")
    assert all(len(c) == 4 and c.isdigit() for c in choices)


def test_code_depends_on_the_server_secret_not_only_on_what_the_phone_sees() -> None:
    seen = {"request_id": "r", "nonce": "n", "hashes": ("aGFzaA==",)}

    codes = {verification_code(secret=bytes([i]), **seen) for i in range(20)}  # type: ignore[arg-type]

    assert len(codes) > 10
