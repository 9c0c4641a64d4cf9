"""Store phase: the store's hot calls on both backends, side by side.

The same three calls, on the same kind of records, through the ``Store``
interface:

- **create**: ``create_request`` of a fresh pending request;
- **state change**: ``transition`` as the SAM makes it, each move with its
  audit record: pending to approved (``sad_digest`` and a ``sad.accepted``
  record), then approved to signed (``signatures`` and a ``key.use``
  record); counted per move;
- **read**: ``get_request`` by id, of the requests the round created.

Each round (1 caller, then 16 concurrent callers) starts from an empty
store, creates for a fixed time, moves the requests it created, then reads
them. It runs first on ``SqliteStore`` (a temporary file), then on
``MongoStore``: the server of ``MONGODB_URI`` when that is set (fresh
databases, dropped afterwards), else FerretDB (``devtools.ferretdb``)
started in a temporary folder and stopped afterwards. The summary table
gets both figures and the ratio MongoDB/SQLite.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import logging
import os
import random
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from bench._report import Plan, Row, detail, format_rate, percentile, progress
from devtools import ferretdb
from devtools.ferretdb import FerretDB
from store import (
    AuditEvent,
    Client,
    Credential,
    RequestState,
    SignatureRequest,
    Store,
    StoreUnavailable,
    User,
)
from store.mongodb import MongoStore, describe_uri
from store.sqlite import SqliteStore

__all__ = ["MongoTarget", "StoreResult", "find_mongodb", "run"]

_SHA256_OID = "2.16.840.1.101.3.4.2.1"
_CLIENT_ID = "bench"
_USER_ID = "bench-user"
_CREDENTIAL_ID = "bench-credential"
_DEVICE_ID = "bench-device"
# (key, label in the detailed report, unit in the summary table)
_OPS = (
    ("create", "create", "creates/s"),
    ("move", "state change", "state changes/s"),
    ("read", "read", "reads/s"),
)
# Most calls one measurement makes, whatever its time budget.
_MAX_CALLS = 1_000_000
# A measurement still running this long after its budget is stopped.
_OVERRUN = 60.0
# Each round first opens the driver's connections, reading nothing.
_WARM_UP_SECONDS = 0.1
_FERRETDB_GO_MOD = ferretdb.ROOT / "tools" / "ferretdb" / "go.mod"

_StoreFactory = Callable[[], contextlib.AbstractAsyncContextManager[Store]]


@dataclass(frozen=True, slots=True)
class MongoTarget:
    """Where the MongoDB figures come from; decided before the timed run,
    since building FerretDB may take minutes."""

    uri: str | None  # MONGODB_URI, or None: FerretDB started for the run
    binary: Path | None = None  # the FerretDB binary, when uri is None
    problem: str | None = None  # why MongoDB cannot be measured


@dataclass(frozen=True, slots=True)
class StoreResult:
    rows: tuple[Row, ...]


@dataclass(slots=True)
class _Figure:
    calls: int = 0  # successful calls (state changes: each move counts)
    failures: int = 0  # calls that found nothing to read or move
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


@dataclass(slots=True)
class _Backend:
    label: str  # "SQLite", "FerretDB" or "MongoDB"
    description: str
    figures: dict[tuple[str, int], _Figure] = field(default_factory=dict)
    created: dict[int, int] = field(default_factory=dict)  # callers -> requests


def find_mongodb() -> MongoTarget:
    """``MONGODB_URI``, else the FerretDB binary, built now if it must be."""
    uri = os.environ.get("MONGODB_URI", "").strip()
    if uri:
        return MongoTarget(uri=uri)
    if not ferretdb.binary_is_current():
        progress(
            "store: building FerretDB with Go into .tools/bin "
            "(first time: a minute or two)"
        )
    try:
        binary = ferretdb.ensure_binary()
    except RuntimeError as e:
        first_line = str(e).splitlines()[0]
        return MongoTarget(
            uri=None,
            problem=f"{first_line} (install Go 1.24 or later and run "
            "`make ferretdb`, or set MONGODB_URI)",
        )
    return MongoTarget(uri=None, binary=binary)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _callers(count: int) -> str:
    return f"{count} caller" if count == 1 else f"{count} callers"


async def _seed(store: Store) -> None:
    """The relying app, user and credential every request refers to."""
    now = datetime.now(UTC)
    await store.add_client(
        Client(
            client_id=_CLIENT_ID,
            name="Bench Portal",
            api_key_hash=hashlib.sha256(secrets.token_bytes(32)).hexdigest(),
            created_at=now,
        )
    )
    await store.add_user(
        User(
            user_id=_USER_ID,
            display_name="Bench Signer",
            key_algorithm="ES256",
            created_at=now,
        )
    )
    await store.add_credential(
        Credential(
            credential_id=_CREDENTIAL_ID,
            user_id=_USER_ID,
            key_id="bench-key",
            key_algorithm="ES256",
            certificate_der=b"not a certificate",
            chain_der=(),
            status="active",
            created_at=now,
        )
    )


def _request() -> SignatureRequest:
    now = datetime.now(UTC)
    request_id = secrets.token_urlsafe(16)
    return SignatureRequest(
        request_id=request_id,
        client_id=_CLIENT_ID,
        user_id=_USER_ID,
        credential_id=_CREDENTIAL_ID,
        hash_algorithm=_SHA256_OID,
        hashes=(_b64(secrets.token_bytes(32)),),
        display_text=f"Sign bench document {request_id[:8]}",
        nonce=secrets.token_urlsafe(24),
        verification_code=f"{secrets.randbelow(100):02d}",
        state=RequestState.PENDING,
        created_at=now,
        updated_at=now,
        expires_at=now + timedelta(hours=1),
    )


async def _warm_up(store: Store, figure: _Figure, deadline: float) -> None:
    while time.perf_counter() < deadline:
        await store.get_request("no such request")


async def _create(
    store: Store, figure: _Figure, deadline: float, created: list[str]
) -> None:
    while time.perf_counter() < deadline and figure.calls < _MAX_CALLS:
        request = _request()
        begun = time.perf_counter()
        await store.create_request(request)
        figure.latencies.append(time.perf_counter() - begun)
        figure.calls += 1
        created.append(request.request_id)


async def _move(
    store: Store, figure: _Figure, deadline: float, pending: list[str]
) -> None:
    """The SAM's two moves of each request, each with its audit record."""
    signature = _b64(secrets.token_bytes(64))  # the size of a P-256 signature
    while pending and time.perf_counter() < deadline:
        request_id = pending.pop()
        digest = hashlib.sha256(request_id.encode()).hexdigest()
        begun = time.perf_counter()
        approved = await store.transition(
            request_id,
            from_states=(RequestState.PENDING,),
            to_state=RequestState.APPROVED,
            now=datetime.now(UTC),
            not_expired=True,
            updates={"sad_digest": digest},
            audit=AuditEvent(
                "sad.accepted",
                actor=f"device:{_DEVICE_ID}",
                subject=f"request:{request_id}",
                outcome="success",
                details={"sad_sha256": digest, "user": _USER_ID},
            ),
        )
        middle = time.perf_counter()
        figure.latencies.append(middle - begun)
        if approved is None:
            figure.failures += 1
            continue
        figure.calls += 1
        if middle >= deadline:
            break  # the request stays approved: nobody looks at it again
        signed = await store.transition(
            request_id,
            from_states=(RequestState.APPROVED,),
            to_state=RequestState.SIGNED,
            now=datetime.now(UTC),
            updates={"signatures": (signature,)},
            audit=AuditEvent(
                "key.use",
                actor="sam",
                subject=f"credential:{_CREDENTIAL_ID}",
                outcome="success",
                details={"request": request_id, "signatures": 1},
            ),
        )
        figure.latencies.append(time.perf_counter() - middle)
        if signed is None:
            figure.failures += 1
        else:
            figure.calls += 1


async def _read(store: Store, figure: _Figure, deadline: float, ids: list[str]) -> None:
    while ids and time.perf_counter() < deadline and figure.calls < _MAX_CALLS:
        request_id = random.choice(ids)
        begun = time.perf_counter()
        found = await store.get_request(request_id)
        figure.latencies.append(time.perf_counter() - begun)
        if found is None or found.request_id != request_id:
            figure.failures += 1
        else:
            figure.calls += 1


async def _timed(
    callers: int, seconds: float, work: Callable[[_Figure, float], Awaitable[None]]
) -> _Figure:
    """Run ``work`` in ``callers`` concurrent loops until the deadline."""
    figure = _Figure()
    started = time.perf_counter()
    deadline = started + seconds
    async with asyncio.timeout(seconds + _OVERRUN):
        await asyncio.gather(*(work(figure, deadline) for _ in range(callers)))
    figure.seconds = time.perf_counter() - started
    return figure


def _work(
    op: str, store: Store, created: list[str]
) -> Callable[[_Figure, float], Awaitable[None]]:
    if op == "create":
        return lambda f, d: _create(store, f, d, created)
    if op == "move":
        # The requests just created, in random order, until none is left: on
        # FerretDB v1 a lookup by id costs more the later the document was
        # inserted, so neither oldest nor newest first would be typical.
        pending = list(created)
        random.shuffle(pending)
        return lambda f, d: _move(store, f, d, pending)
    return lambda f, d: _read(store, f, d, created)


async def _round(
    backend: _Backend, store: Store, name: str, callers: int, seconds: float
) -> None:
    """Create, move, then read, each for ``seconds`` with ``callers``."""
    await _seed(store)
    await _timed(callers, _WARM_UP_SECONDS, lambda f, d: _warm_up(store, f, d))
    created: list[str] = []
    for op, label, _ in _OPS:
        progress(f"store: {name} {label}, {_callers(callers)} ({seconds:g} s)")
        work = _work(op, store, created)
        backend.figures[op, callers] = await _timed(callers, seconds, work)
    backend.created[callers] = len(created)


async def _measure(
    backend: _Backend, stores: _StoreFactory, name: str, plan: Plan
) -> None:
    for callers in plan.store_callers:
        async with stores() as store:
            await _round(backend, store, name, callers, plan.store_seconds)


async def _on_sqlite(plan: Plan, directory: Path) -> _Backend:
    backend = _Backend("SQLite", "SqliteStore on a temporary file")
    files = itertools.count(1)

    @contextlib.asynccontextmanager
    async def stores() -> AsyncIterator[Store]:
        store = SqliteStore(directory / f"store-bench-{next(files)}.db")
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    await _measure(backend, stores, "sqlite", plan)
    return backend


@contextlib.contextmanager
def _quiet_open() -> Iterator[None]:
    # MongoStore.open warns about every missing server feature (FerretDB has
    # neither TTL indexes nor change streams); the report says it once.
    logger = logging.getLogger("store.mongodb")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _pinned_ferretdb() -> str | None:
    """The FerretDB version tools/ferretdb/go.mod pins, if readable."""
    try:
        text = _FERRETDB_GO_MOD.read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(r"github\.com/FerretDB/FerretDB (v\S+)", text)
    return found.group(1) if found else None


async def _describe_server(uri: str, own_build: bool) -> tuple[str, str]:
    """("FerretDB" or "MongoDB", version text), from buildInfo."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=5000
    )
    try:
        info = await client.admin.command("buildInfo")
    finally:
        await client.close()
    wire = info.get("version", "?")
    if "ferretdbVersion" not in info:
        return "MongoDB", f"MongoDB {wire}"
    version = str(info["ferretdbVersion"])
    pinned = _pinned_ferretdb() if own_build else None
    if version == "unknown" and pinned is not None:
        # tools/ferretdb embeds FerretDB; only its release builds set a version.
        version = f"{pinned} (tools/ferretdb/go.mod)"
    return "FerretDB", f"FerretDB {version}, reporting MongoDB {wire}"


async def _measure_mongodb(
    plan: Plan, uri: str, origin: str, own_build: bool
) -> _Backend | str:
    try:
        label, version = await _describe_server(uri, own_build)
    except PyMongoError as e:
        # PyMongo appends its timeouts and whole topology description.
        reason = str(e).split(" (configured timeouts", 1)[0][:200]
        return f"the server at {describe_uri(uri)} does not answer: {reason}"
    backend = _Backend(label, f"MongoStore on {version}, {origin}")
    lacks: list[str] = []

    @contextlib.asynccontextmanager
    async def stores() -> AsyncIterator[Store]:
        store = MongoStore(uri, database=f"sigil_bench_{uuid.uuid4().hex[:12]}")
        with _quiet_open():
            await store.open()
        lacks[:] = [
            text
            for capability, text in (
                ("ttl_indexes", "TTL indexes"),
                ("change_streams", "change streams"),
            )
            if capability not in store.capabilities
        ]
        try:
            yield store
        finally:
            try:
                await store.drop_database()
            finally:
                await store.close()

    progress(f"store: MongoDB store on {version}")
    try:
        await _measure(backend, stores, label.lower(), plan)
    except StoreUnavailable as e:
        if backend.figures:
            raise  # it answered, then went away: something broke
        return str(e)
    if lacks:
        backend.description += f"; the server lacks {' and '.join(lacks)}"
    return backend


async def _on_mongodb(
    plan: Plan, directory: Path, target: MongoTarget
) -> _Backend | str:
    """The figures on MongoDB, or why there are none."""
    if target.uri is not None:
        return await _measure_mongodb(
            plan,
            target.uri,
            f"at {describe_uri(target.uri)} (MONGODB_URI), fresh databases "
            "dropped afterwards",
            own_build=False,
        )
    if target.binary is None:
        return target.problem or "no MongoDB server"
    progress("store: starting FerretDB in a temporary folder")
    try:
        server = await asyncio.to_thread(
            FerretDB.start, directory / "ferretdb", binary=target.binary
        )
    except RuntimeError as e:
        return f"FerretDB did not start: {e}"
    try:
        return await _measure_mongodb(
            plan,
            server.uri,
            f"at {describe_uri(server.uri)}, started for this run on SQLite "
            "files in a temporary folder",
            own_build=True,
        )
    finally:
        await asyncio.to_thread(server.stop)


def _ratio(value: float) -> str:
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def _cell(figure: _Figure | None) -> str:
    if figure is None:
        return "not measured"
    p50 = percentile(figure.latencies, 0.5) * 1e3
    failed = f", {figure.failures} failed" if figure.failures else ""
    return f"{figure.rate:7.0f} /s  p50 {p50:7.2f} ms{failed}"


def _report(
    plan: Plan, lite: _Backend, mongo: _Backend | None, problem: str | None
) -> tuple[Row, ...]:
    other = mongo.label if mongo is not None else "MongoDB"
    detail(
        f"== store: the same Store calls on SQLite and {other}, "
        f"{plan.store_seconds:g} s per figure"
    )
    detail(f"  SQLite: {lite.description}")
    if mongo is not None:
        detail(f"  {mongo.label}: {mongo.description}")
    else:
        detail(f"  MongoDB: not measured: {problem}")
    detail(
        "  a state change is one transition() with its audit record "
        "(pending to approved, then approved to signed);"
    )
    detail(
        "  each round starts from an empty store; moves and reads use the "
        "requests its creates made"
    )
    detail(f"  {'':<26}{'SQLite':<32}{other:<32}{other}/SQLite")
    rows: list[Row] = []
    for callers in plan.store_callers:
        for op, label, unit in _OPS:
            mine = lite.figures[op, callers]
            theirs = mongo.figures[op, callers] if mongo is not None else None
            ratio = (
                _ratio(theirs.rate / mine.rate)
                if theirs is not None and mine.rate
                else "-"
            )
            name = f"{label}, {_callers(callers)}"
            detail(f"  {name:<26}{_cell(mine):<32}{_cell(theirs):<32}{ratio}")
            rows.append(
                Row(
                    "store",
                    f"{unit}, {_callers(callers)}",
                    f"{other} {format_rate(theirs.rate)}"
                    if theirs is not None
                    else f"{other} not measured",
                    f"SQLite {format_rate(mine.rate)}",
                    ratio,
                )
            )
        sizes = f"{lite.created[callers]} on SQLite"
        if mongo is not None:
            sizes += f", {mongo.created[callers]} on {other}"
        detail(f"      requests created in the round: {sizes}")
    failed = sum(f.failures for f in lite.figures.values())
    if mongo is not None:
        failed += sum(f.failures for f in mongo.figures.values())
    if failed:
        detail(f"  {failed} calls found no request to read or move: a store bug")
    detail("")
    return tuple(rows)


async def run(plan: Plan, directory: Path, target: MongoTarget) -> StoreResult:
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    lite = await _on_sqlite(plan, directory)
    outcome = await _on_mongodb(plan, directory, target)
    if isinstance(outcome, str):
        progress(f"store: MongoDB not measured: {outcome}")
        return StoreResult(_report(plan, lite, None, outcome))
    return StoreResult(_report(plan, lite, outcome, None))
