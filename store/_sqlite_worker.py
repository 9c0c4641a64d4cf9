"""One SQLite connection on one thread, fed in batches (group commit).

Every call of the embedded store becomes a job on a queue. The worker thread
takes whatever jobs are waiting, runs them inside one transaction, each
under its own savepoint so that a failing job is undone alone, commits once
and hands all the results back to the event loop with a single wake-up.
Under load this turns many small commits and thread hops into a few; alone,
a job costs what one statement on a worker thread costs.

A job is a plain function of the connection, so a job that needs several
statements (read, then write) is atomic: nothing else runs between them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["SqliteWorker"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]

# Jobs taken at once; bounds how long one transaction holds the write lock.
_MAX_BATCH = 64


@dataclass(slots=True)
class _Task:
    job: Job
    future: asyncio.Future[Any]
    writes: bool
    result: Any = None
    error: BaseException | None = field(default=None)


_STOP = object()


class SqliteWorker:
    """A connection owned by one thread; :meth:`run` queues a job on it."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._queue: queue.SimpleQueue[_Task | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Open the connection on the worker thread; raise what it raised."""
        self._loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._serve, args=(opened,), name="sqlite-store", daemon=True
        )
        self._thread.start()
        await opened

    async def run(self, job: Callable[[sqlite3.Connection], T], *, writes: bool) -> T:
        """Run ``job(connection)`` on the worker; ``writes`` asks for a
        transaction (reads run without one)."""
        if self._loop is None:
            raise RuntimeError("the SQLite worker is not running")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Task(job, future, writes))
        return await future

    async def stop(self) -> None:
        """Finish the queued jobs, close the connection, end the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(thread.join)

    # -- on the worker thread --------------------------------------------------

    def _serve(self, opened: asyncio.Future[None]) -> None:
        try:
            connection = self._connect()
        except BaseException as e:  # handed to the awaiting coroutine
            self._deliver_open(opened, e)
            return
        self._deliver_open(opened, None)
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch, stop = self._take_batch(first)
                self._run_batch(connection, batch)
                self._deliver(batch)
                if stop:
                    return
        finally:
            connection.close()

    def _take_batch(self, first: _Task | object) -> tuple[list[_Task], bool]:
        batch = [first] if isinstance(first, _Task) else []
        while len(batch) < _MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            if isinstance(item, _Task):
                batch.append(item)
        return batch, False

    @staticmethod
    def _run_batch(connection: sqlite3.Connection, batch: list[_Task]) -> None:
        live = [t for t in batch if not t.future.cancelled()]
        if not any(t.writes for t in live):
            for task in live:
                _run_one(connection, task)
            return
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            for task in live:
                task.error = e
            return
        for task in live:
            connection.execute("SAVEPOINT job")
            _run_one(connection, task)
            if task.error is None:
                connection.execute("RELEASE job")
            else:
                connection.execute("ROLLBACK TO job")
                connection.execute("RELEASE job")
        try:
            connection.execute("COMMIT")
        except sqlite3.Error as e:
            connection.rollback()
            for task in live:
                task.result, task.error = None, e

    def _deliver(self, batch: list[_Task]) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(_settle, batch)
        except RuntimeError:
            # The loop is closed: nobody is waiting for these answers.
            log.debug("SQLite results dropped: the event loop is closed")

    def _deliver_open(
        self, opened: asyncio.Future[None], error: BaseException | None
    ) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(_settle_open, opened, error)
        except RuntimeError:
            log.debug("SQLite open result dropped: the event loop is closed")


def _run_one(connection: sqlite3.Connection, task: _Task) -> None:
    try:
        task.result = task.job(connection)
    except Exception as e:
        task.error = e


def _settle(batch: list[_Task]) -> None:
    for task in batch:
        if task.future.cancelled():
            continue
        if task.error is not None:
            task.future.set_exception(task.error)
        else:
            task.future.set_result(task.result)


def _settle_open(opened: asyncio.Future[None], error: BaseException | None) -> None:
    if opened.cancelled():
        return
    if error is not None:
        opened.set_exception(error)
    else:
        opened.set_result(None)
