"""The csc phase's load generator: ``signatures/signHash`` of one hash.

``python -m bench.csc_load`` drives a CSC v1 server on 127.0.0.1 from its
own process and reports on standard output, one line per event (as
``bench.loadgen`` does): ``ready <JSON>`` once the SADs are in hand,
``window-start C`` and ``window-end C`` around each measured window (the
parent samples CPU time then) and last ``result <JSON>``; progress and
warnings go to standard error.

Only the setup differs between the two targets:

* ``sigil``: a user is made with the relying app's API key, a
  :class:`mobile_stub.SimulatedPhone` enrols (a P-256 key in the HSM), then
  ``--sads`` authorisations of ``--hashes-per-sad`` fresh random SHA-256
  hashes each go through ``credentials/authorize``, the phone's approval and
  ``credentials/authorizeCheck``. Every hash is signed once, at most.
* ``dummy``: one ``credentials/authorize`` of one signature without hashes
  (SCAL 1): certomancer-csc-dummy counts nothing, so that SAD serves every
  call, each with a fresh random hash.

The measured part is the same code for both: C workers on one
``aiohttp.ClientSession`` (keep-alive, one connection per worker), each
taking the next (SAD, hash) pair and posting the same v1 body, ``{"credentialID",
"SAD", "hash": [h], "hashAlgo", "signAlgo"}``, back to back for a warm-up and
then a fixed window. A call counts when it finishes inside the window with
200 and one signature. Afterwards a few signatures are checked against the
credential's certificate, and one signed hash is sent again with its SAD to
show which server refuses a second signature.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import logging
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from bench._report import percentile
from bench.loadgen import CodeBoard
from mobile_stub import Policy, SimulatedPhone
from rp_client import RelyingPartyClient

__all__ = ["main"]

SHA256 = "2.16.840.1.101.3.4.2.1"
ECDSA_SHA256 = "1.2.840.10045.4.3.2"
_CALL_LIMIT = 30.0
_APPROVAL_LIMIT = 30.0
# Authorisations waiting on the phone at once (the server allows 20 per user).
_APPROVING = 8
_SLACK = 120.0
_CHECKED = 5
_PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))

Pair = tuple[str, str]  # a SAD and one base64 SHA-256 hash it may sign


def _say(line: str) -> None:
    print(line, flush=True)


def _note(text: str) -> None:
    print(f"[csc-load] {text}", file=sys.stderr, flush=True)


def _fresh_hash() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


@dataclass
class _Target:
    """Where and what to sign: the setup's result."""

    base: str
    credential_id: str
    headers: dict[str, str]
    # One supply of (SAD, hash) pairs per concurrency level, so that a level
    # never eats the hashes of the next.
    pools: list[Iterator[Pair]]
    budget: list[int] | None  # hashes authorised; None when the SAD is reusable
    setup_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Signed:
    """The first few signatures made, to check, and the last one, to send
    its hash again (its SAD most likely still has hashes left)."""

    first: list[tuple[Pair, str]] = field(default_factory=list)
    last: Pair | None = None

    def add(self, pair: Pair, signature: str) -> None:
        if len(self.first) < _CHECKED:
            self.first.append((pair, signature))
        self.last = pair


@dataclass
class _Window:
    start: float
    end: float
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    calls: int = 0
    ok_calls: int = 0
    exhausted_at: float | None = None


async def _post(
    session: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]
) -> tuple[int, Any]:
    async with session.post(url, json=body, headers=headers) as response:
        raw = await response.read()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        # certomancer-csc-dummy answers errors as plain text.
        return response.status, raw.decode("utf-8", "replace")[:200]


def _sign_body(target: _Target, pair: Pair) -> dict[str, Any]:
    sad, value = pair
    return {
        "credentialID": target.credential_id,
        "SAD": sad,
        "hash": [value],
        "hashAlgo": SHA256,
        "signAlgo": ECDSA_SHA256,
    }


async def _worker(
    session: aiohttp.ClientSession,
    target: _Target,
    pool: Iterator[Pair],
    window: _Window,
    signed: _Signed,
) -> None:
    loop = asyncio.get_running_loop()
    url = f"{target.base}/csc/v1/signatures/signHash"
    while loop.time() < window.end:
        pair = next(pool, None)
        if pair is None:
            window.exhausted_at = window.exhausted_at or loop.time()
            return
        begun = loop.time()
        try:
            async with asyncio.timeout(_CALL_LIMIT):
                status, answer = await _post(
                    session, url, _sign_body(target, pair), target.headers
                )
        except (aiohttp.ClientError, TimeoutError) as e:
            window.errors[type(e).__name__] += 1
            window.failures += window.start <= loop.time() <= window.end
            await asyncio.sleep(0.05)
            continue
        finished = loop.time()
        window.calls += 1
        ok = (
            status == 200
            and isinstance(answer, dict)
            and isinstance(answer.get("signatures"), list)
            and len(answer["signatures"]) == 1
        )
        window.ok_calls += ok
        if ok:
            signed.add(pair, str(answer["signatures"][0]))
        if not ok:
            what = (
                answer.get("error_description") if isinstance(answer, dict) else answer
            )
            window.errors[f"HTTP {status}: {what}"] += 1
        if not window.start <= finished <= window.end:
            continue
        if ok:
            window.latencies.append(finished - begun)
        else:
            window.failures += 1


async def _measure(
    session: aiohttp.ClientSession,
    target: _Target,
    pool: Iterator[Pair],
    concurrency: int,
    warmup: float,
    seconds: float,
    signed: _Signed,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    window = _Window(start=start, end=start + seconds)

    said: list[str] = []

    def say(event: str) -> None:
        said.append(event)
        _say(f"{event} {concurrency}")

    async def announce() -> None:
        await asyncio.sleep(max(0.0, window.start - loop.time()))
        say("window-start")
        await asyncio.sleep(max(0.0, window.end - loop.time()))
        say("window-end")

    announcer = asyncio.create_task(announce())
    await asyncio.gather(
        *(_worker(session, target, pool, window, signed) for _ in range(concurrency))
    )
    if window.exhausted_at is not None and not announcer.done():
        # Out of hashes: end the window now, so the parent's clock stops too.
        announcer.cancel()
        for event in ("window-start", "window-end"):
            if event not in said:
                say(event)
    else:
        await announcer
    measured = seconds
    if window.exhausted_at is not None:
        measured = max(1e-3, min(seconds, window.exhausted_at - window.start))
    latencies = window.latencies
    stats = None
    if latencies:
        stats = {name: percentile(latencies, q) for name, q in _PERCENTILES}
        stats["max"] = max(latencies)
    return {
        "concurrency": concurrency,
        "completed": len(latencies),
        "seconds": measured,
        "rate": len(latencies) / measured,
        "latency": stats,
        "failures": window.failures,
        "errors": dict(window.errors.most_common(5)),
        "calls": window.calls,
        "ok_calls": window.ok_calls,
        "exhausted": window.exhausted_at is not None,
    }


# -- setup ------------------------------------------------------------------


async def _setup_sigil(
    args: argparse.Namespace, stack: AsyncExitStack, session: aiohttp.ClientSession
) -> _Target:
    api_key: str = args.api_key
    began = time.monotonic()
    rp = RelyingPartyClient(args.url, api_key, session)
    board = CodeBoard()
    user_id = f"bench-csc-{secrets.token_hex(3)}"
    await rp.create_user("Bench CSC Signer", user_id=user_id, key_algorithm="EC-P256")
    code = await rp.activation_code(user_id)
    phone_session = await stack.enter_async_context(aiohttp.ClientSession())
    phone = SimulatedPhone(
        args.url,
        policy=Policy.APPROVE,
        name="bench csc phone",
        expected_code=board.read,
        session=phone_session,
    )
    await stack.enter_async_context(phone)
    enrolment = await phone.enrol(code)
    credential_id = enrolment.credential_id
    headers = {"Authorization": f"Bearer {api_key}"}
    _note(f"phone enrolled, credential {credential_id}")

    async def authorise(index: int) -> tuple[str, list[str]]:
        values = [_fresh_hash() for _ in range(args.hashes_per_sad)]
        status, started = await _post(
            session,
            f"{args.url}/csc/v1/credentials/authorize",
            {
                "credentialID": credential_id,
                "numSignatures": len(values),
                "hash": values,
                "hashAlgo": SHA256,
                "description": f"Bench batch {index}",
            },
            headers,
        )
        if status != 202:
            raise RuntimeError(f"credentials/authorize: HTTP {status}: {started}")
        handle = started["handle"]
        board.show(handle, started["verificationCode"])
        deadline = time.monotonic() + _APPROVAL_LIMIT
        try:
            while True:
                status, answer = await _post(
                    session,
                    f"{args.url}/csc/v1/credentials/authorizeCheck",
                    {"handle": handle},
                    headers,
                )
                if status == 200:
                    return str(answer["SAD"]), values
                if status != 202 or time.monotonic() > deadline:
                    raise RuntimeError(f"authorizeCheck: HTTP {status}: {answer}")
                await asyncio.sleep(0.02)
        finally:
            board.forget(handle)

    gate = asyncio.Semaphore(_APPROVING)

    async def gated(index: int) -> tuple[str, list[str]]:
        async with gate:
            return await authorise(index)

    counts = [int(c) for c in args.sads.split(",")]
    approved = await asyncio.gather(*(gated(i) for i in range(sum(counts))))
    pools: list[Iterator[Pair]] = []
    budget: list[int] = []
    first = 0
    for count in counts:
        pairs = [
            p for sad, vs in approved[first : first + count] for p in _pairs(sad, vs)
        ]
        pools.append(iter(pairs))
        budget.append(len(pairs))
        first += count
    setup = time.monotonic() - began
    _note(
        f"{len(approved)} authorisations of {args.hashes_per_sad} hashes approved "
        f"on the phone in {setup:.1f} s"
    )
    return _Target(
        args.url,
        credential_id,
        headers,
        pools,
        budget=budget,
        setup_seconds=setup,
        extra={"sads": len(approved), "hashes_per_sad": args.hashes_per_sad},
    )


def _pairs(sad: str, values: list[str]) -> list[Pair]:
    return [(sad, value) for value in values]


async def _setup_dummy(
    args: argparse.Namespace, session: aiohttp.ClientSession
) -> _Target:
    began = time.monotonic()
    credential_id = args.credential_id
    # No authentication on the dummy; the header is sent all the same, so
    # both servers get requests of the same size.
    headers = {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"}
    status, answer = await _post(
        session,
        f"{args.url}/csc/v1/credentials/authorize",
        {"credentialID": credential_id, "numSignatures": 1},
        headers,
    )
    if status != 200:
        raise RuntimeError(f"credentials/authorize: HTTP {status}: {answer}")
    sad = str(answer["SAD"])

    def pairs() -> Iterator[Pair]:
        while True:
            yield sad, _fresh_hash()

    return _Target(
        args.url,
        credential_id,
        headers,
        [pairs() for _ in args.concurrency.split(",")],
        budget=None,
        setup_seconds=time.monotonic() - began,
        extra={"sads": 1, "hashes_per_sad": None},
    )


# -- after the windows ------------------------------------------------------


async def _check(
    session: aiohttp.ClientSession, target: _Target, signed: _Signed
) -> dict[str, Any]:
    """Verify the first signatures; send the last signed hash again."""
    status, info = await _post(
        session,
        f"{target.base}/csc/v1/credentials/info",
        {"credentialID": target.credential_id, "certificates": "single"},
        target.headers,
    )
    verified = 0
    if status == 200 and signed.first:
        der = base64.b64decode(info["cert"]["certificates"][0])
        key = x509.load_der_x509_certificate(der).public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise RuntimeError("the credential's key is not EC")
        for (_, value), signature in signed.first:
            try:
                key.verify(
                    base64.b64decode(signature),
                    base64.b64decode(value),
                    ec.ECDSA(Prehashed(hashes.SHA256())),
                )
                verified += 1
            except InvalidSignature:
                pass
    replay: dict[str, Any] | None = None
    if signed.last is not None:
        again, answer = await _post(
            session,
            f"{target.base}/csc/v1/signatures/signHash",
            _sign_body(target, signed.last),
            target.headers,
        )
        text = (
            answer.get("error_description", "200 with signatures")
            if isinstance(answer, dict)
            else answer
        )
        replay = {"status": again, "answer": str(text)[:120]}
    return {"checked": len(signed.first), "verified": verified, "replay": replay}


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    levels = [int(c) for c in args.concurrency.split(",")]
    connector = aiohttp.TCPConnector(limit=max(levels) + 4)
    timeout = aiohttp.ClientTimeout(total=_CALL_LIMIT + 10)
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=connector, timeout=timeout)
        )
        if args.target == "sigil":
            target = await _setup_sigil(args, stack, session)
        else:
            target = await _setup_dummy(args, session)
        _say(
            "ready "
            + json.dumps({"budget": target.budget, "setup": target.setup_seconds})
        )
        signed = _Signed()
        windows = []
        for level, pool in zip(levels, target.pools, strict=True):
            windows.append(
                await _measure(
                    session, target, pool, level, args.warmup, args.seconds, signed
                )
            )
        checks = await _check(session, target, signed)
    return {
        "target": args.target,
        "credential_id": target.credential_id,
        "budget": target.budget,
        "setup_seconds": target.setup_seconds,
        "windows": windows,
        "ok_calls": sum(w["ok_calls"] for w in windows),
        **checks,
        **target.extra,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.csc_load",
        description="signatures/signHash of one hash per call, C workers at once.",
    )
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--target", choices=["sigil", "dummy"], required=True)
    parser.add_argument("--concurrency", default="1,16", help="e.g. 1,16")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds")
    parser.add_argument("--seconds", type=float, default=8.0, help="window")
    parser.add_argument("--api-key-file", help="relying app API key (sigil)")
    parser.add_argument("--credential-id", default="bench/signer-p256", help="dummy")
    parser.add_argument(
        "--sads",
        default="20,40",
        help="sigil: authorisations for each concurrency level, e.g. 20,40",
    )
    parser.add_argument("--hashes-per-sad", type=int, default=32, help="sigil")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.url.startswith("http://127.0.0.1:"):
        print("error: the load generator targets 127.0.0.1 only", file=sys.stderr)
        return 2
    if args.target == "sigil" and not args.api_key_file:
        print("error: the sigil target needs --api-key-file", file=sys.stderr)
        return 2
    if args.target == "sigil":
        args.api_key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        if len(args.sads.split(",")) != len(args.concurrency.split(",")):
            print("error: give --sads for each concurrency level", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.WARNING)
    levels = len(args.concurrency.split(","))

    async def bounded() -> dict[str, Any]:
        limit = levels * (args.warmup + args.seconds) + _SLACK
        async with asyncio.timeout(limit):
            return await _run(args)

    result = asyncio.run(bounded())
    _say("result " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
