"""pytest plugin: a MongoDB server for the session, and FerretDBs of a test's own.

Register it with ``pytest_plugins = ["tests.conftest_mongo"]`` in
``tests/conftest.py``.

``mongodb_server`` is the server ``MONGODB_URI`` names when that is set, else
FerretDB (tools/ferretdb, built with Go into ``.tools/bin`` by
``scripts/ensure-ferretdb.sh``) on a temporary folder for the whole session.
When neither can be had, each test that needs it fails with the reason: no
MongoDB test is ever skipped.

Building FerretDB takes a minute or two on a new machine, longer than a
test's timeout allows, so it happens once after collection, before the first
test, when a collected test may need it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools import ferretdb
from devtools.ferretdb import FerretDB

# Tests that reach ``mongodb_server``, directly or through a fixture that
# asks for it with ``request.getfixturevalue`` (tests/conftest_store.py does
# for its "mongodb" backend, so its entry points are listed too).
_USES_SESSION_SERVER = {
    "mongodb_server",
    "mongodb_database_name",
    "backend",
    "store",
    "store_backend",
}
_USES_PRIVATE = {"ferretdb_private"}
_BUILD_ERROR = pytest.StashKey[str]()


@dataclass(frozen=True)
class MongoServer:
    """The session's MongoDB server."""

    uri: str
    name: str  # "ferretdb" or "mongodb"
    ferretdb: FerretDB | None  # the process, when this session started it


def _mongodb_uri() -> str | None:
    return os.environ.get("MONGODB_URI", "").strip() or None


def _redact(uri: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", uri)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build FerretDB now, outside any test's timeout, if a test may use it."""
    names: set[str] = set()
    for item in session.items:
        names.update(getattr(item, "fixturenames", ()))
    wanted = bool(names & _USES_PRIVATE) or (
        bool(names & _USES_SESSION_SERVER) and _mongodb_uri() is None
    )
    if not wanted or ferretdb.binary_is_current():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            "building FerretDB with Go for the MongoDB tests "
            "(first time: a minute or two)…"
        )
    try:
        ferretdb.ensure_binary(quiet=True)
    except RuntimeError as e:
        session.config.stash[_BUILD_ERROR] = str(e)


def _binary(config: pytest.Config, hint: str) -> Path:
    error = config.stash.get(_BUILD_ERROR, None)
    if error is None:
        try:
            return ferretdb.ensure_binary(quiet=True)
        except RuntimeError as e:
            error = config.stash[_BUILD_ERROR] = str(e)
    pytest.fail(
        f"FerretDB is needed for this test and could not be built: {error}\n{hint}",
        pytrace=False,
    )


def _server_name(uri: str) -> str:
    """ "ferretdb" or "mongodb", from the server's buildInfo."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient[dict[str, object]] = MongoClient(
        uri, serverSelectionTimeoutMS=5000
    )
    failure = None
    try:
        info = client.admin.command("buildInfo")
    except PyMongoError as e:
        failure = str(e)
    finally:
        client.close()
    if failure is not None:
        pytest.fail(
            f"MONGODB_URI is set ({_redact(uri)}) but that server does not "
            f"answer: {failure}. Unset MONGODB_URI to test on FerretDB instead.",
            pytrace=False,
        )
    return "ferretdb" if "ferretdbVersion" in info else "mongodb"


@pytest.fixture(scope="session")
def mongodb_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MongoServer]:
    """The server of ``MONGODB_URI``, or FerretDB started for this session.

    Fails, never skips, when neither works. Tests share it: each uses a
    database of its own (``mongodb_database_name``) and drops it after.
    """
    uri = _mongodb_uri()
    if uri is not None:
        yield MongoServer(uri=uri, name=_server_name(uri), ferretdb=None)
        return
    binary = _binary(
        request.config, "Or set MONGODB_URI to a MongoDB server to test on."
    )
    try:
        server = FerretDB.start(
            tmp_path_factory.mktemp("ferretdb") / "data", binary=binary
        )
    except RuntimeError as e:
        pytest.fail(f"could not start FerretDB for the session: {e}", pytrace=False)
    try:
        yield MongoServer(uri=server.uri, name="ferretdb", ferretdb=server)
    finally:
        server.stop()


@pytest.fixture
def mongodb_database_name() -> str:
    """A database name no other test uses; whoever creates it drops it."""
    return f"sigil_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def ferretdb_private(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[FerretDB]:
    """A FerretDB process of this test's own, for outages: stopped after it.

    ``stop()`` takes the database away (``kill()`` too, abruptly and at
    once) and ``restart()`` brings it back on the same port with the same
    data, without disturbing the session's ``mongodb_server``. They block,
    ``stop()`` for up to about 3 s while FerretDB lets open connections
    finish: call them through ``asyncio.to_thread`` in an async test.

    This is FerretDB even when ``MONGODB_URI`` names a real MongoDB server,
    which a test cannot stop: those tests then still need Go to build
    FerretDB (``make ferretdb``), and fail when it cannot be built.
    """
    binary = _binary(
        request.config,
        "A test that stops its server needs FerretDB even when MONGODB_URI is set.",
    )
    try:
        server = FerretDB.start(tmp_path / "ferretdb", binary=binary)
    except RuntimeError as e:
        pytest.fail(f"could not start a private FerretDB: {e}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
