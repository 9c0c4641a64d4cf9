"""Secrets every server process of one installation must share.

A secret is made once and kept as a store setting (hex). Two processes
starting together must not each keep one of their own, or what one signs
would fail at the other: the first to claim the making (a single-use store
entry) writes it; the others wait for it and read it. Should the claimer die
before writing, the others write one after ``CLAIM_WAIT`` seconds and read
back whatever won.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta

from store import Store

__all__ = ["CLAIM_WAIT", "load_shared_secret"]

CLAIM_WAIT = 5.0


async def load_shared_secret(store: Store, setting: str) -> bytes:
    """The 32-byte secret kept in ``setting``, made if there is none yet."""
    deadline = time.monotonic() + CLAIM_WAIT
    while True:
        value = await store.get_setting(setting)
        if value is not None:
            return _secret_bytes(setting, value)
        claimed = await store.use_once(
            "shared-secret",
            setting,
            expires_at=datetime.now(UTC) + timedelta(seconds=CLAIM_WAIT),
        )
        if claimed or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    await store.put_setting(setting, secrets.token_bytes(32).hex())
    value = await store.get_setting(setting)
    if value is None:
        raise RuntimeError(f"the store setting {setting} could not be written")
    return _secret_bytes(setting, value)


def _secret_bytes(setting: str, value: str) -> bytes:
    try:
        key = bytes.fromhex(value)
    except ValueError:
        key = b""
    if len(key) < 32:
        # The message names the setting, never its value (SAD-6).
        raise RuntimeError(f"the store setting {setting} is not 32 hex bytes")
    return key
