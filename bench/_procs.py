"""Child processes of the benchmark: start, watch, measure and stop them.

Every child is started by this process, listens on 127.0.0.1 only and is
stopped by its own pid (SIGTERM, then SIGKILL after a grace period). Should
this process die without stopping them, the kernel sends them SIGTERM
(Linux ``PR_SET_PDEATHSIG``), so no server outlives a benchmark.
Memory and CPU figures come from ``/proc/<pid>``: psutil is not a
dependency of the project.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "BENCH_ROOT",
    "BIN",
    "Child",
    "ChildFailed",
    "child_env",
    "cpu_seconds",
    "free_port",
    "peak_rss_kib",
    "run_tool",
]

BIN = Path(sys.executable).parent
# The folder that holds the bench package: children run ``-m bench.<x>``
# from there, as ``python -m bench`` itself does.
BENCH_ROOT = Path(__file__).resolve().parent.parent

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Resolved here, not in the child: between fork and exec the child must not
# import or allocate more than it can help.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1
_KEEP_LINES = 40
_STOP_GRACE = 15.0


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildFailed(Exception):
    """A child process exited early or did not say what was expected."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child: ours without SoftHSM or Sigil settings.

    This process points ``SOFTHSM2_CONF`` at its own temporary token; a
    server child must find the token of its own home instead, and stray
    ``SIGIL_*`` variables would send it to ``var/``.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "SOFTHSM2_CONF" and not name.startswith("SIGIL_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM of a live process in KiB, or None when it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def _stat_seconds(path: str) -> float | None:
    try:
        text = Path(path).read_text(encoding="ascii")
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after it don't.
    fields = text.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


def cpu_seconds(pid: int) -> tuple[float, float] | None:
    """CPU time of a live process: all threads, and its main thread alone.

    In an asyncio server the main thread is the event loop; the rest are
    worker threads (PKCS#11 sessions, the SQLite connection).
    """
    total = _stat_seconds(f"/proc/{pid}/stat")
    main = _stat_seconds(f"/proc/{pid}/task/{pid}/stat")
    if total is None or main is None:
        return None
    return total, main


class Child:
    """A child process whose merged output is read line by line.

    The last lines are kept for error messages; ``lines`` receives every
    line for whoever waits on a marker or a message.
    """

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.tail: collections.deque[str] = collections.deque(maxlen=_KEEP_LINES)
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path = BENCH_ROOT,
        stderr_to_stdout: bool = True,
    ) -> Child:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if stderr_to_stdout else None,
            env=dict(env),
            cwd=cwd,
            preexec_fn=_die_with_parent,
        )
        return cls(name, process)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _read(self) -> None:
        stream = self.process.stdout
        if stream is None:
            return
        try:
            while raw := await stream.readline():
                line = raw.decode("utf-8", errors="replace").rstrip()
                self.tail.append(line)
                self.lines.put_nowait(line)
        finally:
            self.lines.put_nowait(None)

    async def next_line(self, timeout: float) -> str:
        """The next line of output; ChildFailed at its end or on timeout."""
        try:
            async with asyncio.timeout(timeout):
                line = await self.lines.get()
        except TimeoutError:
            raise self.failure(f"said nothing for {timeout:.0f} s") from None
        if line is None:
            await self.process.wait()
            raise self.failure(f"exited with status {self.process.returncode}")
        return line

    async def wait_for(self, marker: str, timeout: float) -> str:
        """Skip output until a line holds ``marker``; return that line."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self.failure(f"did not print {marker!r} in {timeout:.0f} s")
            line = await self.next_line(remaining)
            if marker in line:
                return line

    def failure(self, what: str) -> ChildFailed:
        tail = "\n".join(f"    | {line}" for line in self.tail)
        return ChildFailed(f"{self.name} {what}; its last output:\n{tail}")

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a grace period; return the exit status."""
        process = self.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), _STOP_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._reader, 5)
        return process.returncode

    async def finish(self, timeout: float) -> int:
        """Wait for the child to exit by itself, killing it after ``timeout``."""
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            await self.stop()
            raise self.failure(f"did not finish within {timeout:.0f} s") from None
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._reader, 5)
        return self.process.returncode or 0


async def run_tool(
    argv: list[str], env: dict[str, str], what: str, *, limit: float = 120.0
) -> None:
    """Run a command to its end; ``ChildFailed`` unless it exits with 0."""
    child = await Child.start(what, argv, env=env)
    status = await child.finish(limit)
    if status != 0:
        raise child.failure(f"exited with status {status}")
