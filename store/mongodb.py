"""The production store: MongoDB through PyMongo's asyncio client.

No operation here needs a multi-document transaction, and none trusts a
read-then-write to be atomic: FerretDB v1 carries out ``findAndModify`` and
deletes as a query followed by a write by ``_id``, so two connections can
both "win" a conditional update there. What every MongoDB-speaking server
does atomically is refuse a second document with the same unique key and
count the rows a delete removed, and the single-use rules rest on that:

- A request move (STATE-1) first claims the request's current ``version``
  by inserting a move document ``<request id>/<version>``. Only the one
  claimant writes the new state, with a conditional ``find_one_and_update``
  on that version. The move document holds the new fields and the move's
  audit record, so a move and its audit record cannot part: if the process
  dies or the database goes away half-way, ``flush_audit`` finishes the
  move and appends the record exactly once.
- Single-use values, challenges and activation codes get a fresh ``_id``
  each time, and are used by deleting that ``_id``: of two callers, only
  the one whose delete removed the document has used it.
- The audit chain (AUD-3): record ``n`` is inserted with ``_id = n``, so of
  two processes racing for one place only one insert succeeds; the loser
  re-reads and takes the next. A ``meta`` document remembers the head so an
  append needs no scan; a head left behind is caught up by the next append.

TTL indexes purge finished requests and expired single-use values where
the server has them; FerretDB does not, and then the sweeper's
``purge_finished`` and a periodic delete do the same work. Expiry never
depends on a purge having run: every use compares ``expires_at`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)

from store._mongo_docs import (
    Doc,
    audit_from_doc,
    client_doc,
    client_from_doc,
    code_doc,
    code_from_doc,
    credential_doc,
    credential_from_doc,
    device_doc,
    device_from_doc,
    factors_doc,
    factors_from_doc,
    from_us,
    idempotency_lookup,
    request_doc,
    request_from_doc,
    request_sets,
    to_us,
    ttl_date,
    user_doc,
    user_from_doc,
)
from store._rules import (
    STALE_APPROVAL_ERROR,
    Changes,
    check_limit,
    check_transition,
    check_updates,
)
from store.audit import GENESIS_HASH, canonical_json, chain_hash
from store.base import Store
from store.errors import DuplicateError, StoreBusy, StoreError, StoreUnavailable
from store.models import (
    CSC,
    RP,
    ActivationCode,
    AuditEvent,
    AuditRecord,
    Client,
    Credential,
    Device,
    DeviceStatus,
    RequestState,
    SignatureRequest,
    User,
    UserFactors,
)

__all__ = ["MongoStore", "describe_uri"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# A move unfinished for this long is taken to be cut off by a crash or an
# outage, and flush_audit finishes it; a younger one belongs to a caller
# that is still at work.
MOVE_GRACE = timedelta(seconds=30)

# How long a move waits for another process's move of the same request
# before it gives up with StoreBusy, and the longest pause between tries.
# (Moves from this process wait their turn on a lock instead.)
_MOVE_WAIT = 15.0
_MOVE_BACKOFF = 0.005
_MOVE_BACKOFF_MAX = 0.05
# Attempts of other retry loops (activation codes).
_MOVE_ATTEMPTS = 12

# Expired single-use values are deleted once every this many use_once()
# calls, whether or not the server has TTL indexes.
PURGE_EVERY = 256

# How often an audit append retries after losing its place to another
# process before it gives up.
_APPEND_ATTEMPTS = 64

_NOT_IMPLEMENTED = 238  # MongoDB's error code, also FerretDB's
_HEAD_ID = "audit_head"


def describe_uri(uri: str) -> str:
    """The scheme and hosts of a MongoDB URI: no user, password or options."""
    scheme, _, rest = uri.partition("://")
    hosts = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    return f"{scheme}://{hosts}"


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Turn driver errors into the store's own (store.errors)."""
    try:
        yield
    except DuplicateKeyError as e:
        raise DuplicateError("a record with this identity exists") from e
    except ConnectionFailure as e:
        # Covers server selection timeouts, refused connections and
        # network errors in the middle of an operation.
        raise StoreUnavailable(f"MongoDB: {type(e).__name__}") from e
    except OperationFailure as e:
        raise StoreError(f"MongoDB refused the operation (code {e.code})") from e
    except PyMongoError as e:
        raise StoreError(f"MongoDB: {type(e).__name__}") from e


class MongoStore(Store):
    """The MongoDB backend.

    ``finished_retention`` is how long a final request is kept; it sets the
    TTL of finished requests where TTL indexes exist. ``move_wait`` is how
    long a change waits for another process's change of the same request
    before it gives up with ``StoreBusy``.
    """

    def __init__(
        self,
        uri: str,
        *,
        database: str = "sigil",
        finished_retention: timedelta = timedelta(hours=1),
        server_selection_timeout: float = 3.0,
        move_wait: float = _MOVE_WAIT,
    ) -> None:
        if not database:
            raise ValueError("MongoDB database name is empty")
        self._uri = uri
        self._where = describe_uri(uri)
        self._database_name = database
        self._retention = finished_retention
        self._selection_timeout = server_selection_timeout
        self._move_wait = move_wait
        self._client: AsyncMongoClient[Doc] | None = None
        self._db: AsyncDatabase[Doc] | None = None
        self._append_lock = asyncio.Lock()
        self._move_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._use_once_calls = 0
        self.capabilities: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"MongoStore({self._where!r}, database={self._database_name!r})"

    # -- plumbing -------------------------------------------------------------
    def _col(self, name: str) -> AsyncCollection[Doc]:
        if self._db is None:
            raise StoreUnavailable("the MongoDB store is not open")
        return self._db[name]

    # -- life cycle -------------------------------------------------------------
    async def open(self) -> None:
        if self._client is not None:
            return
        timeout_ms = int(self._selection_timeout * 1000)
        client: AsyncMongoClient[Doc] = AsyncMongoClient(
            self._uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=max(timeout_ms * 4, 10_000),
            appname="sigil",
        )
        self._client = client
        self._db = client[self._database_name]
        try:
            with _translated():
                await client.admin.command("ping")
                await self._prepare()
        except StoreError as e:
            await self.close()
            raise StoreUnavailable(
                f"cannot open the MongoDB store at {self._where}: {e}"
            ) from e
        logger.debug("opened MongoDB store %s/%s", self._where, self._database_name)

    async def _prepare(self) -> None:
        meta = self._col("meta")
        # Two processes opening a new database at once: one insert wins.
        with contextlib.suppress(DuplicateKeyError):
            await meta.insert_one({"_id": "schema", "version": SCHEMA_VERSION})
        with contextlib.suppress(DuplicateKeyError):
            await meta.insert_one({"_id": _HEAD_ID, "seq": 0, "hash": GENESIS_HASH})
        schema = await meta.find_one({"_id": "schema"})
        version = int(schema["version"]) if schema else SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"database {self._database_name} has schema version {version}; "
                f"this code uses {SCHEMA_VERSION}"
            )

        # Identity: _id is each record's natural id (a device's id is its key
        # thumbprint, so one key is one device).
        await self._col("clients").create_index("api_key_hash", unique=True)
        await self._col("activation_codes").create_index("code_hash", unique=True)
        await self._col("activation_codes").create_index("user_id", unique=True)
        await self._col("challenges").create_index("challenge", unique=True)
        await self._col("devices").create_index("user_id")
        await self._col("credentials").create_index("user_id")
        await self._col("credentials").create_index("key_id")
        await self._col("used_values").create_index(
            [("scope", ASCENDING), ("value", ASCENDING)], unique=True
        )
        requests = self._col("requests")
        await requests.create_index("idem", unique=True)
        await requests.create_index(
            [("user_id", ASCENDING), ("state", ASCENDING), ("created_at", DESCENDING)]
        )
        await requests.create_index(
            [("client_id", ASCENDING), ("created_at", DESCENDING)]
        )
        await requests.create_index([("state", ASCENDING), ("expires_at", ASCENDING)])
        await requests.create_index([("state", ASCENDING), ("updated_at", ASCENDING)])
        await requests.create_index(
            [("state", ASCENDING), ("kind", ASCENDING), ("authorized_until", ASCENDING)]
        )
        await requests.create_index("finished_at")
        moves = self._col("request_moves")
        await moves.create_index([("done", ASCENDING), ("queued_at", ASCENDING)])
        await moves.create_index("request_id")
        await self._col("audit").create_index("move_id")

        capabilities: set[str] = set()
        if await self._ttl_indexes():
            capabilities.add("ttl_indexes")
        if await self._change_streams():
            capabilities.add("change_streams")
        self.capabilities = frozenset(capabilities)

    async def _ttl_indexes(self) -> bool:
        try:
            for name in ("used_values", "challenges", "activation_codes"):
                await self._col(name).create_index("ttl_at", expireAfterSeconds=0)
            await self._col("requests").create_index("purge_at", expireAfterSeconds=0)
        except OperationFailure as e:
            if e.code != _NOT_IMPLEMENTED:
                raise
            logger.warning(
                "the MongoDB server at %s has no TTL indexes; finished requests "
                "and used values are purged by the server's sweeper instead",
                self._where,
            )
            return False
        return True

    async def _change_streams(self) -> bool:
        try:
            async with await self._col("requests").watch(max_await_time_ms=1):
                pass
        except OperationFailure as e:
            # FerretDB: not implemented; a standalone MongoDB: replica sets only.
            logger.warning(
                "the MongoDB server at %s has no change streams (%s); long polls "
                "see changes made by other server processes by re-reading",
                self._where,
                e.code,
            )
            return False
        return True

    async def close(self) -> None:
        client, self._client, self._db = self._client, None, None
        if client is None:
            return
        await client.close()
        logger.debug("closed MongoDB store %s", self._where)

    async def drop_database(self) -> None:
        """Delete everything this store holds (tests and benchmarks)."""
        if self._client is None:
            raise StoreUnavailable("the MongoDB store is not open")
        with _translated():
            await self._client.drop_database(self._database_name)

    # -- settings -------------------------------------------------------------
    async def get_setting(self, key: str) -> str | None:
        with _translated():
            doc = await self._col("settings").find_one({"_id": key})
        return None if doc is None else str(doc["value"])

    async def put_setting(self, key: str, value: str) -> None:
        settings = self._col("settings")
        with _translated():
            try:
                await settings.update_one(
                    {"_id": key}, {"$set": {"value": value}}, upsert=True
                )
            except DuplicateKeyError:
                # Another process inserted it first: now it exists.
                await settings.update_one({"_id": key}, {"$set": {"value": value}})

    # -- clients --------------------------------------------------------------
    async def add_client(self, client: Client) -> None:
        with _translated():
            await self._col("clients").insert_one(client_doc(client))

    async def client_by_key_hash(self, api_key_hash: str) -> Client | None:
        with _translated():
            doc = await self._col("clients").find_one({"api_key_hash": api_key_hash})
        return None if doc is None else client_from_doc(doc)

    async def revoke_client(self, client_id: str, *, now: datetime) -> Client | None:
        clients = self._col("clients")
        with _translated():
            # The first revocation time stays: only an unrevoked client moves.
            doc = await clients.find_one_and_update(
                {"_id": client_id, "revoked_at": None},
                {"$set": {"revoked_at": to_us(now, "now")}},
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                doc = await clients.find_one({"_id": client_id})
        return None if doc is None else client_from_doc(doc)

    async def list_clients(self) -> list[Client]:
        with _translated():
            docs = await (
                self._col("clients")
                .find()
                .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
                .to_list()
            )
        return [client_from_doc(doc) for doc in docs]

    # -- users and activation codes -------------------------------------------
    async def add_user(self, user: User) -> None:
        with _translated():
            await self._col("users").insert_one(user_doc(user))

    async def get_user(self, user_id: str) -> User | None:
        with _translated():
            doc = await self._col("users").find_one({"_id": user_id})
        return None if doc is None else user_from_doc(doc)

    async def list_users(self) -> list[User]:
        with _translated():
            docs = await (
                self._col("users")
                .find()
                .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
                .to_list()
            )
        return [user_from_doc(doc) for doc in docs]

    # -- second factors ---------------------------------------------------------
    async def get_factors(self, user_id: str) -> UserFactors | None:
        with _translated():
            doc = await self._col("factors").find_one({"_id": user_id})
        return None if doc is None else factors_from_doc(doc)

    async def put_factors(self, factors: UserFactors) -> None:
        doc = factors_doc(factors)
        with _translated():
            try:
                await self._col("factors").replace_one(
                    {"_id": doc["_id"]}, doc, upsert=True
                )
            except DuplicateKeyError:
                await self._col("factors").replace_one({"_id": doc["_id"]}, doc)

    async def raise_totp_step(self, user_id: str, step: int) -> None:
        # Each step is accepted once through use_once's unique insert; this
        # only remembers the latest beyond use_once's memory, so a lost race
        # between two different steps costs nothing.
        with _translated():
            await self._col("factors").update_one(
                {
                    "_id": user_id,
                    "$or": [
                        {"totp_last_step": None},
                        {"totp_last_step": {"$lt": step}},
                    ],
                },
                {"$set": {"totp_last_step": step}},
            )

    async def add_activation_code(self, code: ActivationCode) -> None:
        codes = self._col("activation_codes")
        with _translated():
            for _ in range(_MOVE_ATTEMPTS):
                # The user's old code goes; the unique user_id index makes
                # sure that of two issuers racing, one code stays.
                await codes.delete_many({"user_id": code.user_id})
                try:
                    await codes.insert_one(code_doc(code))
                    return
                except DuplicateKeyError:
                    if await codes.find_one({"code_hash": code.code_hash}):
                        raise
        raise StoreError("activation codes of this user keep changing; try again")

    async def consume_activation_code(
        self, code_hash: str, *, now: datetime
    ) -> ActivationCode | None:
        codes = self._col("activation_codes")
        with _translated():
            doc = await codes.find_one({"code_hash": code_hash})
            if doc is None:
                return None
            # Deleting is the use: only the caller whose delete removed it
            # has it. An expired code goes too, it is dead anyway.
            result = await codes.delete_one({"_id": doc["_id"]})
        if result.deleted_count != 1 or doc["expires_at"] <= to_us(now, "now"):
            return None
        return code_from_doc(doc)

    # -- devices --------------------------------------------------------------
    async def add_device(self, device: Device) -> None:
        with _translated():
            await self._col("devices").insert_one(device_doc(device))

    async def get_device(self, device_id: str) -> Device | None:
        with _translated():
            doc = await self._col("devices").find_one({"_id": device_id})
        return None if doc is None else device_from_doc(doc)

    async def list_devices(self, *, user_id: str | None = None) -> list[Device]:
        query = {} if user_id is None else {"user_id": user_id}
        with _translated():
            docs = await (
                self._col("devices")
                .find(query)
                .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
                .to_list()
            )
        return [device_from_doc(doc) for doc in docs]

    async def set_device_status(
        self, device_id: str, status: DeviceStatus
    ) -> Device | None:
        with _translated():
            doc = await self._col("devices").find_one_and_update(
                {"_id": device_id},
                {"$set": {"status": DeviceStatus(status).value}},
                return_document=ReturnDocument.AFTER,
            )
        if doc is None:
            return None
        logger.debug("device %s is now %s", device_id, status)
        return device_from_doc(doc)

    async def clear_push_subscription(self, device_id: str, endpoint: str) -> bool:
        with _translated():
            # Only if unchanged: a re-subscribed device keeps its new one.
            result = await self._col("devices").update_one(
                {"_id": device_id, "push_subscription.endpoint": endpoint},
                {"$set": {"push_subscription": None}},
            )
        return result.modified_count == 1

    # -- credentials ------------------------------------------------------------
    async def add_credential(self, credential: Credential) -> None:
        with _translated():
            await self._col("credentials").insert_one(credential_doc(credential))

    async def get_credential(self, credential_id: str) -> Credential | None:
        with _translated():
            doc = await self._col("credentials").find_one({"_id": credential_id})
        return None if doc is None else credential_from_doc(doc)

    async def list_credentials(self, *, user_id: str | None = None) -> list[Credential]:
        query = {} if user_id is None else {"user_id": user_id}
        with _translated():
            docs = await (
                self._col("credentials")
                .find(query)
                .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
                .to_list()
            )
        return [credential_from_doc(doc) for doc in docs]

    # -- single-use values ------------------------------------------------------
    async def use_once(self, scope: str, value: str, *, expires_at: datetime) -> bool:
        now = datetime.now(UTC)
        entry = {
            "scope": scope,
            "value": value,
            "expires_at": to_us(expires_at, "expires_at"),
            "ttl_at": ttl_date(expires_at),
        }
        with _translated():
            fresh = await self._insert_single_use(
                self._col("used_values"), {"scope": scope, "value": value}, entry, now
            )

        self._use_once_calls += 1
        if self._use_once_calls % PURGE_EVERY == 0:
            await self._purge_expired(now)
        return fresh

    async def clear_use_once(self, scope: str) -> int:
        with _translated():
            result = await self._col("used_values").delete_many({"scope": scope})
        return result.deleted_count

    async def _purge_expired(self, now: datetime) -> None:
        now_us = to_us(now, "now")
        purged = 0
        with _translated():
            for name in ("used_values", "challenges", "activation_codes"):
                result = await self._col(name).delete_many(
                    {"expires_at": {"$lte": now_us}}
                )
                purged += result.deleted_count
        logger.debug("purged %s expired single-use entries", purged)

    @staticmethod
    async def _insert_single_use(
        collection: AsyncCollection[Doc], key: Doc, entry: Doc, now: datetime
    ) -> bool:
        """Insert ``entry`` unless a live entry has the same unique ``key``.

        An expired entry is deleted first. Its ``_id`` was fresh, so a late
        delete never removes an entry someone else has since inserted, and
        the unique index lets only one of two racing inserts through.
        """
        try:
            await collection.insert_one(dict(entry))
            return True
        except DuplicateKeyError:
            pass
        await collection.delete_many({**key, "expires_at": {"$lte": to_us(now, "now")}})
        try:
            await collection.insert_one(dict(entry))
            return True
        except DuplicateKeyError:
            return False

    async def put_challenge(self, challenge: str, *, expires_at: datetime) -> None:
        entry = {
            "challenge": challenge,
            "expires_at": to_us(expires_at, "expires_at"),
            "ttl_at": ttl_date(expires_at),
        }
        with _translated():
            fresh = await self._insert_single_use(
                self._col("challenges"),
                {"challenge": challenge},
                entry,
                datetime.now(UTC),
            )
        if not fresh:
            raise DuplicateError("this challenge is already outstanding")

    async def take_challenge(self, challenge: str, *, now: datetime) -> bool:
        challenges = self._col("challenges")
        with _translated():
            doc = await challenges.find_one({"challenge": challenge})
            if doc is None:
                return False
            result = await challenges.delete_one({"_id": doc["_id"]})
        return result.deleted_count == 1 and doc["expires_at"] > to_us(now, "now")

    # -- signature requests -----------------------------------------------------
    async def create_request(self, request: SignatureRequest) -> SignatureRequest:
        doc = request_doc(request)
        key = request.idempotency_key
        requests = self._col("requests")
        with _translated():
            try:
                await requests.insert_one(doc)
                logger.debug("created request %s", request.request_id)
                return request
            except DuplicateKeyError:
                if key is None:
                    raise
            # A retry, or a race with the same key: the first one stands.
            existing = await requests.find_one(
                {"idem": idempotency_lookup(request.client_id, key)}
            )
        if existing is None:
            # The key is free, so the clash was the request id itself.
            raise DuplicateError(f"request {request.request_id} exists")
        logger.debug("idempotent create returned request %s", existing["_id"])
        return request_from_doc(existing)

    async def get_request(self, request_id: str) -> SignatureRequest | None:
        with _translated():
            doc = await self._col("requests").find_one({"_id": request_id})
        return None if doc is None else request_from_doc(doc)

    async def list_requests(
        self,
        *,
        user_id: str | None = None,
        client_id: str | None = None,
        states: Collection[RequestState] | None = None,
        limit: int = 100,
    ) -> list[SignatureRequest]:
        check_limit(limit)
        query: Doc = {}
        if user_id is not None:
            query["user_id"] = user_id
        if client_id is not None:
            query["client_id"] = client_id
        if states is not None:
            values = sorted({RequestState(s).value for s in states})
            if not values:
                return []
            query["state"] = {"$in": values}
        with _translated():
            docs = await (
                self._col("requests")
                .find(query)
                .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
                .limit(limit)
                .to_list()
            )
        return [request_from_doc(doc) for doc in docs]

    async def transition(
        self,
        request_id: str,
        *,
        from_states: Collection[RequestState],
        to_state: RequestState,
        now: datetime,
        not_expired: bool = False,
        updates: Mapping[str, Any] | None = None,
        audit: AuditEvent | None = None,
    ) -> SignatureRequest | None:
        states = {s.value for s in check_transition(from_states, to_state)}
        to_state = RequestState(to_state)
        fields = check_updates(updates)
        now_us = to_us(now, "now")

        def decide(doc: Doc) -> Doc | None:
            if doc["state"] not in states:
                return None
            if not_expired and doc["expires_at"] <= now_us:
                return None
            return {**self._moved_fields(to_state, now), **request_sets(fields)}

        entry = None if audit is None else _audit_entry(now_us, audit)
        moved = await self._move(request_id, decide, entry)
        if moved is None:
            logger.debug("request %s not moved to %s", request_id, to_state.value)
            return None
        logger.debug("request %s moved to %s", request_id, to_state.value)
        return request_from_doc(moved)

    async def update_request(
        self,
        request_id: str,
        change: Callable[[SignatureRequest], Changes | None],
        *,
        now: datetime,
        audit: AuditEvent | None = None,
    ) -> SignatureRequest | None:
        def decide(doc: Doc) -> Doc | None:
            changes = change(request_from_doc(doc))
            if changes is None:
                return None
            sets = request_sets(changes)
            if changes.get("finished_at") is not None:
                sets["purge_at"] = ttl_date(changes["finished_at"] + self._retention)
            return sets

        entry = None if audit is None else _audit_entry(to_us(now, "now"), audit)
        moved = await self._move(request_id, decide, entry)
        return None if moved is None else request_from_doc(moved)

    def _moved_fields(self, to_state: RequestState, now: datetime) -> Doc:
        now_us = to_us(now, "now")
        sets: Doc = {"state": to_state.value, "updated_at": now_us}
        if to_state.is_final:
            sets["finished_at"] = now_us
            sets["purge_at"] = ttl_date(now + self._retention)
        return sets

    async def _move(
        self,
        request_id: str,
        decide: Callable[[Doc], Doc | None],
        audit: Doc | None = None,
    ) -> Doc | None:
        """Move one request (see the module docstring); ``decide`` looks at
        the current document and gives the fields to set, or ``None`` when
        the move does not apply to it. Returns the moved document."""
        lock = self._move_locks.get(request_id)
        if lock is None:
            lock = self._move_locks[request_id] = asyncio.Lock()
        # Callers of this process take turns, so they never race each other
        # for a claim; the claim then only arbitrates between processes.
        async with lock:
            return await self._move_claimed(request_id, decide, audit)

    async def _move_claimed(
        self,
        request_id: str,
        decide: Callable[[Doc], Doc | None],
        audit: Doc | None,
    ) -> Doc | None:
        requests, moves = self._col("requests"), self._col("request_moves")
        deadline = asyncio.get_running_loop().time() + self._move_wait
        attempt = 0
        while True:
            attempt += 1
            with _translated():
                doc = await requests.find_one({"_id": request_id})
            if doc is None:
                return None
            sets = decide(doc)
            if sets is None:
                return None
            version = int(doc["version"])
            sets["version"] = version + 1
            move: Doc = {
                "_id": f"{request_id}/{version}",
                "request_id": request_id,
                "version": version,
                "queued_at": to_us(datetime.now(UTC), "now"),
                "sets": sets,
                "audit": audit,
                "done": False,
            }
            with _translated():
                try:
                    await moves.insert_one(move)
                except DuplicateKeyError:
                    # Another process holds this version: wait for its write.
                    if asyncio.get_running_loop().time() > deadline:
                        logger.warning(
                            "request %s is held by an unfinished move", request_id
                        )
                        raise StoreBusy(
                            "the request is being changed by another call"
                        ) from None
                    await asyncio.sleep(min(_MOVE_BACKOFF * attempt, _MOVE_BACKOFF_MAX))
                    continue
                moved = await requests.find_one_and_update(
                    {"_id": request_id, "version": version},
                    {"$set": sets},
                    return_document=ReturnDocument.AFTER,
                )
            if moved is None:  # pragma: no cover - every writer claims first
                logger.error("request %s changed under claim %s", request_id, version)
                return None
            try:
                await self._finish_move(move)
            except StoreUnavailable:
                # The move stands; flush_audit appends its record later.
                logger.warning(
                    "request %s moved but its audit record waits: database unreachable",
                    request_id,
                )
            return moved

    async def _finish_move(self, move: Doc) -> None:
        """Append the move's audit record unless already done; mark it done."""
        entry = move["audit"]
        if entry is not None:
            with _translated():
                done = await self._col("audit").find_one(
                    {"move_id": move["_id"]}, projection={"_id": 1}
                )
            if done is None:
                await self._append(
                    time_us=entry["time"],
                    event=AuditEvent(
                        entry["event"],
                        entry["actor"],
                        entry["subject"],
                        entry["outcome"],
                    ),
                    details_json=entry["details"],
                    move_id=move["_id"],
                )
        with _translated():
            await self._col("request_moves").update_one(
                {"_id": move["_id"]}, {"$set": {"done": True}}
            )

    async def flush_audit(self, *, now: datetime) -> int:
        """Finish moves cut off half-way: write the request if that is still
        to do, append the audit record if missing; return how many."""
        cutoff = to_us(now - MOVE_GRACE, "now")
        requests = self._col("requests")
        with _translated():
            stale = await (
                self._col("request_moves")
                .find({"done": False, "queued_at": {"$lt": cutoff}})
                .sort("queued_at", ASCENDING)
                .to_list()
            )
        for move in stale:
            with _translated():
                # Its claim keeps every other writer away from this version.
                await requests.update_one(
                    {"_id": move["request_id"], "version": move["version"]},
                    {"$set": move["sets"]},
                )
            await self._finish_move(move)
        if stale:
            logger.warning("finished %s request moves cut off half-way", len(stale))
        return len(stale)

    async def expire_due(self, *, now: datetime) -> list[str]:
        now_us = to_us(now, "now")
        pending = RequestState.PENDING.value

        def decide(doc: Doc) -> Doc | None:
            if doc["state"] != pending or doc["expires_at"] > now_us:
                return None
            return self._moved_fields(RequestState.EXPIRED, now)

        ids = await self._move_each(
            {"state": pending, "expires_at": {"$lte": now_us}}, decide
        )
        approved = RequestState.APPROVED.value

        def decide_csc(doc: Doc) -> Doc | None:
            until = doc.get("authorized_until")
            if doc["state"] != approved or until is None or until > now_us:
                return None
            return self._moved_fields(RequestState.EXPIRED, now)

        ids += await self._move_each(
            {
                "state": approved,
                "kind": CSC,
                "authorized_until": {"$lte": now_us},
            },
            decide_csc,
        )
        if ids:
            logger.debug("expired %s requests", len(ids))
        return ids

    async def fail_stale_approved(
        self, *, before: datetime, now: datetime
    ) -> list[str]:
        before_us = to_us(before, "before")
        approved = RequestState.APPROVED.value

        def decide(doc: Doc) -> Doc | None:
            if doc["state"] != approved or doc["updated_at"] >= before_us:
                return None
            if doc.get("kind", RP) != RP:
                return None
            sets = self._moved_fields(RequestState.FAILED, now)
            sets["error"] = doc.get("error") or STALE_APPROVAL_ERROR
            return sets

        ids = await self._move_each(
            {"state": approved, "kind": RP, "updated_at": {"$lt": before_us}}, decide
        )
        if ids:
            logger.warning("failed %s approved requests left unsigned", len(ids))
        return ids

    async def _move_each(
        self, query: Doc, decide: Callable[[Doc], Doc | None]
    ) -> list[str]:
        """Move every request matching ``query``; return the ids this call
        moved (another process sweeping at once moves the others)."""
        with _translated():
            candidates = await (
                self._col("requests").find(query, projection={"_id": 1}).to_list()
            )
        moved: list[str] = []
        for candidate in candidates:
            request_id = str(candidate["_id"])
            if await self._move(request_id, decide) is not None:
                moved.append(request_id)
        return moved

    async def purge_finished(self, *, before: datetime) -> int:
        old = {"finished_at": {"$ne": None, "$lt": to_us(before, "before")}}
        requests = self._col("requests")
        with _translated():
            ids = [
                doc["_id"]
                for doc in await requests.find(old, projection={"_id": 1}).to_list()
            ]
            if not ids:
                return 0
            result = await requests.delete_many({**old, "_id": {"$in": ids}})
            await self._col("request_moves").delete_many(
                {"request_id": {"$in": ids}, "done": True}
            )
        if result.deleted_count:
            logger.debug("purged %s finished requests", result.deleted_count)
        return result.deleted_count

    # -- audit trail ------------------------------------------------------------
    async def append_audit(
        self,
        *,
        time: datetime,
        event: str,
        actor: str,
        subject: str,
        outcome: str,
        details: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        details_json = canonical_json(dict(details or {}))
        return await self._append(
            time_us=to_us(time, "time"),
            event=AuditEvent(event, actor, subject, outcome),
            details_json=details_json,
        )

    async def _append(
        self,
        *,
        time_us: int,
        event: AuditEvent,
        details_json: str,
        move_id: str | None = None,
    ) -> AuditRecord:
        """Put one record at the end of the chain (see the module docstring)."""
        meta, audit = self._col("meta"), self._col("audit")
        details = json.loads(details_json)  # what is stored is what is hashed
        async with self._append_lock:
            with _translated():
                for _ in range(_APPEND_ATTEMPTS):
                    head = await meta.find_one({"_id": _HEAD_ID})
                    seq = (int(head["seq"]) if head else 0) + 1
                    prev_hash = str(head["hash"]) if head else GENESIS_HASH
                    doc: Doc = {
                        "_id": seq,
                        "time": time_us,
                        "event": event.event,
                        "actor": event.actor,
                        "subject": event.subject,
                        "outcome": event.outcome,
                        "details": details_json,
                        "prev_hash": prev_hash,
                    }
                    doc["hash"] = chain_hash(
                        prev_hash=prev_hash,
                        seq=seq,
                        time=from_us(time_us),
                        event=event.event,
                        actor=event.actor,
                        subject=event.subject,
                        outcome=event.outcome,
                        details=details,
                    )
                    if move_id is not None:
                        doc["move_id"] = move_id
                    try:
                        await audit.insert_one(doc)
                    except DuplicateKeyError:
                        # Someone else holds this place: catch the head up.
                        await self._advance_head(seq)
                        continue
                    await self._advance_head(seq, doc["hash"])
                    return audit_from_doc(doc, details)
        raise StoreError("the audit chain is too busy; try again")

    async def _advance_head(self, seq: int, digest: str | None = None) -> None:
        """Move the head from ``seq - 1`` to the stored record ``seq``."""
        if digest is None:
            taken = await self._col("audit").find_one({"_id": seq})
            if taken is None:  # pragma: no cover - the insert said it exists
                return
            digest = str(taken["hash"])
        await self._col("meta").update_one(
            {"_id": _HEAD_ID, "seq": seq - 1}, {"$set": {"seq": seq, "hash": digest}}
        )

    async def audit_records(
        self, *, after_seq: int = 0, limit: int = 1000
    ) -> Sequence[AuditRecord]:
        check_limit(limit)
        with _translated():
            docs = await (
                self._col("audit")
                .find({"_id": {"$gt": after_seq}})
                .sort("_id", ASCENDING)
                .limit(limit)
                .to_list()
            )
        return [audit_from_doc(doc, json.loads(doc["details"])) for doc in docs]

    # -- changes made by any process -----------------------------------------
    def change_feed(self) -> AsyncIterator[str] | None:
        if "change_streams" not in self.capabilities:
            return None
        return self._watch_requests()

    async def _watch_requests(self) -> AsyncIterator[str]:
        pipeline = [{"$match": {"operationType": {"$in": ["update", "replace"]}}}]
        while self._db is not None:
            try:
                async with await self._col("requests").watch(pipeline) as stream:
                    async for change in stream:
                        yield str(change["documentKey"]["_id"])
            except PyMongoError as e:
                logger.warning("request change stream broke (%s); reopening", e)
                await asyncio.sleep(1.0)


def _audit_entry(time_us: int, event: AuditEvent) -> Doc:
    return {
        "time": time_us,
        "event": event.event,
        "actor": event.actor,
        "subject": event.subject,
        "outcome": event.outcome,
        "details": canonical_json(event.details),
    }
