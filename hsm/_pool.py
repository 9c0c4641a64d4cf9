"""A bounded pool of PKCS#11 sessions driven from worker threads (HSM-3).

Callers queue jobs; a worker thread that holds one session takes jobs off the
queue until it is empty, so a burst of calls costs one thread wake-up, not one
per signature. At most one worker drives a session at a time, and at most as
many workers run as there are sessions. A job that fails because its session
was lost is retried once on a reopened session.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

from pkcs11 import exceptions as p11e

from ._session import SESSION_LOST, SessionSlot, translate_error
from .errors import SessionUnavailable

__all__ = ["SessionPool"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class _Job(NamedTuple):
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


# Most results a worker holds back before handing them to the event loop.
_BATCH = 8


def _settle_all(finished: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in finished:
        if future.done():  # cancelled while the job ran
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class SessionPool:
    """Sessions of one token and the threads that use them."""

    def __init__(
        self,
        slots: list[SessionSlot],
        *,
        executor: ThreadPoolExecutor,
        lock: threading.Lock,
        reopen: Callable[[SessionSlot], None],
        name: str,
    ) -> None:
        self.slots = slots
        self._lock = lock
        self._reopen = reopen
        self._name = name
        self._executor = executor
        self._idle = list(slots)
        self._jobs: collections.deque[_Job] = collections.deque()
        self._working = 0
        self._closed = False
        self._all_idle: asyncio.Event | None = None

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(slot, *args)`` on a worker thread with a session."""
        if self._closed:
            raise SessionUnavailable("the HSM connection is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._jobs.append(_Job(fn, args, future))
        self._start_workers(loop)
        return await future

    async def close(self, finish: Callable[[], None]) -> None:
        """Let queued jobs finish, then run ``finish`` on a worker thread."""
        if self._closed:
            return
        self._closed = True
        if len(self._idle) < len(self.slots):
            self._all_idle = asyncio.Event()
            await self._all_idle.wait()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._locked, finish)
        finally:
            self._executor.shutdown(wait=False)

    def _locked(self, finish: Callable[[], None]) -> None:
        with self._lock:
            finish()

    # Event loop thread only.
    def _start_workers(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._idle and len(self._jobs) > self._working:
            slot = self._idle.pop()
            self._working += 1
            self._executor.submit(self._work, slot, loop)

    # Event loop thread only.
    def _worker_done(self, slot: SessionSlot, loop: asyncio.AbstractEventLoop) -> None:
        self._working -= 1
        self._idle.append(slot)
        if self._jobs:
            # A job queued while the worker was deciding to stop.
            self._start_workers(loop)
        elif self._all_idle is not None and len(self._idle) == len(self.slots):
            self._all_idle.set()

    # Worker thread.
    def _work(self, slot: SessionSlot, loop: asyncio.AbstractEventLoop) -> None:
        # Results go back in small batches: every hand-over wakes the event
        # loop, and a woken loop competes with this thread for the GIL.
        finished: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            while True:
                try:
                    job = self._jobs.popleft()
                except IndexError:
                    return
                if job.future.cancelled():
                    continue
                try:
                    result = self._run(slot, job.fn, job.args)
                except Exception as e:
                    finished.append((job.future, False, e))
                else:
                    finished.append((job.future, True, result))
                if len(finished) >= _BATCH or not self._jobs:
                    loop.call_soon_threadsafe(_settle_all, finished)
                    finished = []
        finally:
            if finished:
                loop.call_soon_threadsafe(_settle_all, finished)
            loop.call_soon_threadsafe(self._worker_done, slot, loop)

    # Worker thread.
    def _run(
        self, slot: SessionSlot, fn: Callable[..., _T], args: tuple[Any, ...]
    ) -> _T:
        with self._lock:
            try:
                try:
                    return fn(slot, *args)
                except SESSION_LOST as e:
                    logger.warning(
                        "PKCS#11 session on token %r lost (%s); reopening it",
                        self._name,
                        type(e).__name__,
                    )
                    self._reopen(slot)
                    return fn(slot, *args)
            except p11e.PKCS11Error as e:
                raise translate_error(e) from e
