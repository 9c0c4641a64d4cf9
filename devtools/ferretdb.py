"""FerretDB, a MongoDB wire-protocol server on SQLite, as a child process.

``tools/ferretdb`` embeds FerretDB v1 in a small Go program that
``scripts/ensure-ferretdb.sh`` builds into ``.tools/bin/sigil-ferretdb``. The
test suite and ``make demo-mongodb`` run it where no MongoDB server is
installed. Everything here blocks: call it from sync fixtures and scripts, or
through ``asyncio.to_thread``. The server never imports this module.

From a shell: ``python -m devtools.ferretdb --data DIR [--port N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType, TracebackType

__all__ = ["BINARY", "FerretDB", "binary_is_current", "ensure_binary", "main"]

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / ".tools" / "bin" / "sigil-ferretdb"
STAMP = BINARY.with_name(BINARY.name + ".stamp")
ENSURE_SCRIPT = ROOT / "scripts" / "ensure-ferretdb.sh"
SOURCES = tuple(
    ROOT / "tools" / "ferretdb" / n for n in ("main.go", "go.mod", "go.sum")
)

HOST = "127.0.0.1"
READY_PREFIX = "ready "
# A port just given up may still be held for a moment (the old process is
# exiting, or another process took it between our check and the bind).
BIND_ATTEMPTS = 6
BIND_RETRY_SECONDS = 0.5
LOG_TAIL_CHARS = 2000


def _source_hash() -> str:
    # The same digest as scripts/ensure-ferretdb.sh: the three files, joined.
    digest = hashlib.sha256()
    for path in SOURCES:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def binary_is_current() -> bool:
    """Whether ``BINARY`` exists and was built from the current sources."""
    if not BINARY.is_file():
        return False
    if not all(path.is_file() for path in SOURCES):
        return True  # no sources to rebuild from: take the binary as it is
    try:
        built_from = STAMP.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return False
    return built_from == _source_hash()


def ensure_binary(*, quiet: bool = False) -> Path:
    """Build ``BINARY`` when it is missing or stale, and return its path.

    The build (a minute or two the first time, while Go fetches modules)
    prints its progress on stderr, or, when ``quiet``, says nothing and puts
    its output in the error if it fails. Raises ``RuntimeError`` when the
    binary cannot be built, Go being missing for instance.
    """
    if binary_is_current():
        return BINARY
    if not ENSURE_SCRIPT.is_file():
        raise RuntimeError(f"{BINARY} is missing and {ENSURE_SCRIPT} is not there")
    logger.info("building %s with %s", BINARY, ENSURE_SCRIPT)
    result = subprocess.run(
        ["bash", str(ENSURE_SCRIPT)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        # Not on stdout, which may carry a URI for a script to read.
        stdout=subprocess.PIPE if quiet else 2,
        stderr=subprocess.STDOUT if quiet else None,
        check=False,
    )
    if result.returncode != 0 or not BINARY.is_file():
        output = (result.stdout or b"").decode(errors="replace").strip()
        detail = f":\n{output[-LOG_TAIL_CHARS:]}" if output else " (see its output)"
        raise RuntimeError(
            f"could not build FerretDB: scripts/ensure-ferretdb.sh exited with "
            f"{result.returncode}{detail}\nInstall Go 1.24 or later and run "
            f"`make ferretdb`."
        )
    return BINARY


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class _AddressInUse(RuntimeError):
    pass


class FerretDB:
    """A running ``sigil-ferretdb`` process on ``127.0.0.1:port``.

    Make one with ``FerretDB.start``. ``stop`` and ``restart`` keep the port
    and the data folder, so a test can take the database away and bring it
    back with its data. Also a context manager that stops it on exit.
    """

    def __init__(self, data_dir: Path, port: int, log_path: Path, binary: Path):
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://{HOST}:{self.port}/"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<FerretDB {self.uri} {state} data={self.data_dir}>"

    @classmethod
    def start(
        cls,
        data_dir: Path,
        *,
        port: int | None = None,
        timeout: float = 30,
        log_path: Path | None = None,
        binary: Path | None = None,
    ) -> FerretDB:
        """Start FerretDB on ``data_dir`` and return once it takes connections.

        Without ``port``, a free loopback port. FerretDB's log goes to
        ``log_path``, by default ``<data_dir>.log`` beside the data folder.
        Builds the binary first if needed. Raises ``RuntimeError``, with the
        end of the log, when it does not come up within ``timeout`` seconds.
        """
        data_dir = data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        log = log_path or data_dir.with_name(data_dir.name + ".log")
        server = cls(data_dir, port or 0, log, binary or ensure_binary())
        if not port:
            # A port found free can be taken before FerretDB binds it: pick again.
            for attempt in range(1, BIND_ATTEMPTS + 1):
                server.port = free_port()
                try:
                    server._launch(timeout)
                    return server
                except _AddressInUse:
                    logger.info("port %s taken, attempt %s", server.port, attempt)
            raise RuntimeError(f"FerretDB found no free port; log: {log}")
        server._launch_retrying(timeout)
        return server

    def restart(self, timeout: float = 30) -> None:
        """Stop if running, then start again on the same port and data folder."""
        self.stop()
        self._launch_retrying(timeout)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds. Does nothing if stopped."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    logger.warning(
                        "FerretDB pid %s ignored SIGTERM: killed", process.pid
                    )
                    process.kill()
                    process.wait()
            logger.info(
                "FerretDB on port %s stopped (%s)", self.port, process.returncode
            )
        finally:
            if process.stdout is not None:
                process.stdout.close()

    def kill(self) -> None:
        """An abrupt outage: SIGKILL now. ``stop`` waits (up to about 3 s)
        for open client connections; this does not. ``restart`` works after
        either. Does nothing if stopped."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self.stop()

    def wait(self) -> int:
        """Block until the process exits by itself; its exit code."""
        if self._process is None:
            raise RuntimeError("FerretDB is not running")
        return self._process.wait()

    def __enter__(self) -> FerretDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _launch_retrying(self, timeout: float) -> None:
        for attempt in range(1, BIND_ATTEMPTS + 1):
            try:
                self._launch(timeout)
                return
            except _AddressInUse:
                if attempt == BIND_ATTEMPTS:
                    raise RuntimeError(
                        f"FerretDB could not bind port {self.port} after "
                        f"{attempt} attempts; log: {self.log_path}"
                    ) from None
                logger.info("port %s still in use, retrying", self.port)
                time.sleep(BIND_RETRY_SECONDS)

    def _launch(self, timeout: float) -> None:
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log_offset = log.tell()
            process = subprocess.Popen(
                [
                    str(self.binary),
                    "-listen",
                    f"{HOST}:{self.port}",
                    "-data",
                    str(self.data_dir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self._process = process
        try:
            self._wait_ready(process, timeout, log_offset)
        except BaseException:
            self.stop(timeout=2)
            raise
        logger.info(
            "FerretDB ready on %s (pid %s, data %s)",
            self.uri,
            process.pid,
            self.data_dir,
        )

    def _wait_ready(
        self, process: subprocess.Popen[bytes], timeout: float, log_offset: int
    ) -> None:
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"FerretDB did not accept connections on port {self.port} within "
                    f"{timeout:g} s; end of {self.log_path}:\n"
                    f"{self._log_tail(log_offset)}"
                )
            readable, _, _ = select.select([process.stdout], [], [], remaining)
            if not readable:
                continue
            line = process.stdout.readline().decode(errors="replace").strip()
            if line.startswith(READY_PREFIX):
                return
            if line:
                logger.debug("sigil-ferretdb: %s", line)
                continue
            # End of output: the process has exited.
            code = process.wait()
            tail = self._log_tail(log_offset)
            if "address already in use" in tail:
                raise _AddressInUse(tail)
            raise RuntimeError(
                f"FerretDB exited with {code} before accepting connections; "
                f"end of {self.log_path}:\n{tail}"
            )

    def _log_tail(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError as e:
            return f"(log unreadable: {e})"
        return text[-LOG_TAIL_CHARS:].strip() or "(empty)"


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.ferretdb",
        description=(
            "Run FerretDB (the MongoDB wire protocol on SQLite) in the "
            "foreground, building it with Go first if needed. Prints its "
            "mongodb:// URI on stdout once it accepts connections; Ctrl-C or "
            "SIGTERM stops it."
        ),
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for its SQLite files",
    )
    parser.add_argument(
        "--port", type=int, metavar="N", help="loopback TCP port (default: a free one)"
    )
    parser.add_argument(
        "--log",
        type=Path,
        metavar="PATH",
        help="FerretDB's log file (default: DATA.log beside DATA)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30,
        metavar="SECONDS",
        help="seconds to wait for it to come up (default: 30)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        server = FerretDB.start(
            args.data, port=args.port, timeout=args.timeout, log_path=args.log
        )
    except RuntimeError as e:
        print(f"devtools.ferretdb: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    try:
        with server:
            print(server.uri, flush=True)
            print(
                f"FerretDB on {server.uri}, data in {server.data_dir}, "
                f"log in {server.log_path}; Ctrl-C stops it",
                file=sys.stderr,
                flush=True,
            )
            code = server.wait()
    except KeyboardInterrupt:
        return 0
    print(f"devtools.ferretdb: FerretDB exited with {code}", file=sys.stderr)
    return code or 1


if __name__ == "__main__":
    sys.exit(main())
