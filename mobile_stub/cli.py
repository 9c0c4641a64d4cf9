"""The ``sigil-phone`` command: a simulated phone for demos and benchmarks.

``enrol`` registers a new phone and saves it to a state file, ``run`` loads
it and answers pushed requests by a policy, ``enrol-and-run`` does both in
one process. The activation code is a secret: it comes from the environment
variable SIGIL_ACTIVATION_CODE or from standard input, never from argv. So
does the signer's PIN: ``--pin`` takes it from SIGIL_PHONE_PIN or asks for it
on the terminal without echo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TextIO

import aiohttp

from .errors import PhoneError
from .models import ExpectedCode, Policy, ShownRequest
from .phone import SimulatedPhone

__all__ = ["main"]

logger = logging.getLogger(__name__)

ACTIVATION_CODE_ENV: Final = "SIGIL_ACTIVATION_CODE"
PIN_ENV: Final = "SIGIL_PHONE_PIN"
EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_TIMEOUT: Final = 3
_CODE_FILE_POLL: Final = 0.05


class UsageError(Exception):
    """A mistake in how the command was called."""


def _printable(text: str) -> str:
    """Escape control characters: the server's text must not drive the tty."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_shown(shown: ShownRequest) -> str:
    """What the phone showed and did, as the lines ``run`` prints."""
    lines = [
        f"request {_printable(shown.request_id)}",
        f"  relying party: {_printable(shown.relying_party)}",
        f"  display text:  {_printable(shown.display_text)}",
        f"  codes:         {'  '.join(_printable(c) for c in shown.codes)}",
        f"  picked:        {_printable(shown.picked or '-')}",
    ]
    if shown.decision is None or shown.outcome is None:
        lines.append("  decision:      none (silent)")
    else:
        status, body = shown.outcome
        detail = ""
        if isinstance(body, dict):
            detail = str(body.get("state") or body.get("error") or "")
        result = f"HTTP {status} {_printable(detail)}".rstrip()
        lines.append(f"  decision:      {shown.decision} -> {result}")
    return "\n".join(lines)


def _print_shown(shown: ShownRequest) -> None:
    print(format_shown(shown), flush=True)


def read_activation_code(stdin: TextIO) -> str:
    """From SIGIL_ACTIVATION_CODE, else a prompt on a tty, else a stdin line."""
    code = os.environ.get(ACTIVATION_CODE_ENV, "")
    if not code:
        if stdin.isatty():
            code = getpass.getpass("activation code: ")
        else:
            code = stdin.readline()
    code = code.strip()
    if not code:
        raise UsageError(
            f"no activation code: set {ACTIVATION_CODE_ENV} or give it on stdin"
        )
    return code


def read_pin(stdin: TextIO) -> str:
    """From SIGIL_PHONE_PIN, else a prompt without echo on a terminal."""
    pin = os.environ.get(PIN_ENV, "")
    if not pin and stdin.isatty():
        pin = getpass.getpass("PIN: ")
    pin = pin.strip()
    if not pin:
        raise UsageError(f"--pin: set {PIN_ENV} or run on a terminal to type it")
    if not (pin.isascii() and pin.isdigit() and 4 <= len(pin) <= 12):
        raise UsageError("--pin: the PIN must be 4 to 12 digits")
    return pin


class CodeFile:
    """Reads the code the relying app shows from lines ``request_id code``.

    The relying app or demo appends one line per request; the phone polls
    the file for up to ``wait`` seconds after a push, then gives up (and a
    careful user rejects).
    """

    def __init__(self, path: Path, *, wait: float) -> None:
        self.path = path
        self.wait = wait

    def _lookup(self, request_id: str) -> str | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        found = None
        for line in text.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0] == request_id:
                found = fields[1]
        return found

    async def __call__(self, request_id: str) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while True:
            code = await asyncio.to_thread(self._lookup, request_id)
            if code is not None or loop.time() >= deadline:
                return code
            await asyncio.sleep(_CODE_FILE_POLL)


class StdinCodes:
    """Asks for the code the relying app shows, one request at a time.

    A line may be the bare code or ``request_id code``. A daemon thread
    reads stdin, so that a blocked read never holds up the exit.
    """

    def __init__(self, stdin: TextIO, prompt_to: TextIO) -> None:
        self._stdin = stdin
        self._prompt_to = prompt_to
        self._lock = asyncio.Lock()
        self._lines: asyncio.Queue[str | None] | None = None

    def _start_reader(self) -> asyncio.Queue[str | None]:
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()

        def read() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                for line in self._stdin:
                    loop.call_soon_threadsafe(lines.put_nowait, line)
                loop.call_soon_threadsafe(lines.put_nowait, None)

        threading.Thread(target=read, name="sigil-phone-stdin", daemon=True).start()
        return lines

    async def __call__(self, request_id: str) -> str | None:
        async with self._lock:
            if self._lines is None:
                self._lines = self._start_reader()
            print(
                f"code shown by the relying app for {_printable(request_id)}: ",
                end="",
                file=self._prompt_to,
                flush=True,
            )
            line = await self._lines.get()
        if line is None:
            self._lines.put_nowait(None)  # stdin stays at its end
            return None
        fields = line.split()
        if len(fields) == 2 and fields[0] == request_id:
            return fields[1]
        return fields[0] if len(fields) == 1 else None


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", required=True, metavar="URL", help="the server's base URL"
    )
    parser.add_argument(
        "--state",
        required=True,
        type=Path,
        metavar="FILE",
        help="the phone's state file (private keys; written with mode 0600)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help=f"the signer's policy asks for a PIN: read it from ${PIN_ENV} or, "
        "if unset, ask on the terminal (never echoed); sent at enrolment and "
        "with approvals that ask for it",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level on stderr (default: WARNING)",
    )


def _add_enrol_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="loopback port of the push endpoint, kept in the state file so "
        "that 'run' answers on the registered subscription (default: any)",
    )
    parser.add_argument("--name", default="simulated phone", help="device name")
    parser.add_argument(
        "--force", action="store_true", help="overwrite an existing state file"
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        choices=[str(p) for p in Policy],
        default=str(Policy.APPROVE),
        help="what the simulated user does with each request (default: approve)",
    )
    codes = parser.add_mutually_exclusive_group()
    codes.add_argument(
        "--code-file",
        type=Path,
        metavar="FILE",
        help="file of lines 'request_id code' the relying app appends",
    )
    codes.add_argument(
        "--expect-code-from-stdin",
        action="store_true",
        help="ask on stdin for the code the relying app shows",
    )
    parser.add_argument(
        "--code-wait",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds to wait for a request's line in --code-file (default: 5)",
    )
    parser.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="exit 0 after handling N requests (default: run until stopped)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="give up after S seconds; with --count that exits 3",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.0,
        metavar="S",
        help="also poll for pending requests every S seconds, for when pushes "
        "fail (default: poll once at start only)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sigil-phone",
        description="A simulated phone that enrols with a sigil server, "
        "receives Web Push challenges on loopback and answers them.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    secret_note = (
        f"The activation code is read from ${ACTIVATION_CODE_ENV} or, if unset, "
        "from stdin (a prompt on a terminal)."
    )

    enrol = commands.add_parser(
        "enrol",
        help="enrol a new phone and save it to a state file",
        description="Enrol a new phone and save it to a state file. " + secret_note,
    )
    _add_common(enrol)
    _add_enrol_options(enrol)

    run = commands.add_parser(
        "run",
        help="load a saved phone and answer requests",
        description="Load a saved phone, listen for pushes on its registered "
        "port and answer each request by the policy.",
    )
    _add_common(run)
    _add_run_options(run)

    both = commands.add_parser(
        "enrol-and-run",
        help="enrol, save, then answer requests in one process",
        description="Enrol a new phone, save it, then answer requests. " + secret_note,
    )
    _add_common(both)
    _add_enrol_options(both)
    _add_run_options(both)
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if "policy" in args:
        policy = Policy(args.policy)
        has_code_source = args.code_file is not None or args.expect_code_from_stdin
        if policy in (Policy.APPROVE, Policy.WRONG_CODE) and not has_code_source:
            parser.error(
                f"--policy {policy} needs --code-file or --expect-code-from-stdin: "
                "the user reads the code off the relying app"
            )
        if args.count is not None and args.count < 1:
            parser.error("--count must be at least 1")
        if args.timeout is not None and args.timeout <= 0:
            parser.error("--timeout must be positive")
    if "port" in args and not 0 <= args.port < 65536:
        parser.error("--port must be 0 to 65535")


def _expected_code(args: argparse.Namespace) -> ExpectedCode | None:
    if args.code_file is not None:
        return CodeFile(args.code_file, wait=args.code_wait)
    if args.expect_code_from_stdin:
        return StdinCodes(sys.stdin, sys.stderr)
    return None


def _phone_options(args: argparse.Namespace) -> dict[str, Any]:
    if "policy" not in args:
        # enrol alone never answers a request.
        return {"policy": Policy.SILENT}
    return {
        "policy": Policy(args.policy),
        "expected_code": _expected_code(args),
        "on_shown": _print_shown,
    }


async def _enrol(
    phone: SimulatedPhone, args: argparse.Namespace, activation_code: str
) -> None:
    enrolment = await phone.enrol(activation_code)
    phone.save(args.state)
    print(
        f"enrolled device {enrolment.device_id} for user {enrolment.user_id}, "
        f"credential {enrolment.credential_id}; state saved to {args.state}",
        flush=True,
    )
    if phone.has_totp:
        print("the server provisioned a TOTP secret; it is kept in the state file")


async def _poll(phone: SimulatedPhone, interval: float) -> None:
    while True:
        try:
            await phone.poll_once()
        except (PhoneError, aiohttp.ClientError) as e:
            logger.warning("polling for pending requests failed: %s", e)
        if interval <= 0:
            return
        await asyncio.sleep(interval)


async def _serve(phone: SimulatedPhone, args: argparse.Namespace) -> int:
    print(
        f"listening for pushes on {phone.push_endpoint.rsplit('/', 1)[0]}/...",
        file=sys.stderr,
        flush=True,
    )
    poller = asyncio.create_task(_poll(phone, args.poll_interval))
    try:
        if args.count is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.timeout):
                    await asyncio.Event().wait()
            return EXIT_OK
        try:
            await phone.wait_for_count(args.count, timeout=args.timeout)
        except TimeoutError:
            print(
                f"sigil-phone: timed out after {args.timeout} s with "
                f"{len(phone.shown)} of {args.count} requests handled",
                file=sys.stderr,
            )
            return EXIT_TIMEOUT
        print(f"handled {args.count} requests", file=sys.stderr, flush=True)
        return EXIT_OK
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller


async def _main_async(
    args: argparse.Namespace, activation_code: str | None, pin: str | None = None
) -> int:
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)

    options = _phone_options(args)
    if args.command == "run":
        phone = SimulatedPhone.load(args.state, args.server, pin=pin, **options)
    else:
        phone = SimulatedPhone(
            args.server, name=args.name, push_port=args.port, pin=pin, **options
        )
    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(phone)
        except OSError as e:
            raise PhoneError(f"cannot listen for pushes on 127.0.0.1: {e}") from e
        if activation_code is not None:
            await _enrol(phone, args, activation_code)
        if args.command == "enrol":
            return EXIT_OK
        return await _serve(phone, args)
    raise AssertionError("unreachable")  # pragma: no cover


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    activation_code = None
    try:
        if args.command != "run":
            if args.state.exists() and not args.force:
                raise UsageError(
                    f"{args.state} exists; pass --force to replace that phone"
                )
            activation_code = read_activation_code(sys.stdin)
        pin = read_pin(sys.stdin) if args.pin else None
        return asyncio.run(_main_async(args, activation_code, pin))
    except UsageError as e:
        print(f"sigil-phone: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (PhoneError, aiohttp.ClientError) as e:
        print(f"sigil-phone: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except asyncio.CancelledError:
        # SIGTERM cancels the main task.
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
