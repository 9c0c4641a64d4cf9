"""Fail any test during which something blocked the event loop.

Every test loop runs in asyncio's debug mode, which logs each callback that
holds the loop longer than ``slow_callback_duration``; a PKCS#11, Argon2 or
SQLite call made on the loop instead of a worker thread shows up there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping

import pytest

# Generous, so that a garbage collection on a busy CI machine is not taken
# for a blocking call; an RSA key generation or a stuck PKCS#11 call on the
# loop takes longer.
SLOW_CALLBACK_SECONDS = 0.5


def _watchful_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK_SECONDS
    return loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"debug": _watchful_loop}


@pytest.fixture(autouse=True)
def _event_loop_never_blocks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    slow = [
        r.getMessage()
        for r in caplog.get_records("call")
        if r.name == "asyncio" and " took " in r.getMessage()
    ]
    assert not slow, f"the event loop was blocked: {slow}"
