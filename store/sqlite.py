"""The embedded store: one SQLite file in WAL mode, on a batching worker thread.

Every change is one job of the worker (store._sqlite_worker): request moves
are conditional ``UPDATE ... RETURNING`` (STATE-1), single-use values are
``INSERT ... ON CONFLICT`` or ``DELETE ... RETURNING``, and an audit append
reads the chain head and inserts the next link inside the worker's
``BEGIN IMMEDIATE`` transaction, so no other process appends in between
(AUD-3). Each job runs under its own savepoint: it succeeds or leaves no
trace, whatever the other jobs of its batch do.
"""

# Interpolated SQL below is only ever module constants or column names from
# store._rules.UPDATABLE_FIELDS; every value travels as a ``?`` parameter.
# ruff: noqa: S608

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from store._rules import (
    STALE_APPROVAL_ERROR,
    Changes,
    check_limit,
    check_transition,
    check_updates,
)
from store._sqlite_rows import (
    AUDIT_COLUMNS,
    CREDENTIAL_COLUMNS,
    DEVICE_COLUMNS,
    FACTOR_COLUMNS,
    REQUEST_COLUMNS,
    USER_COLUMNS,
    audit_from_row,
    client_from_row,
    credential_from_row,
    credential_params,
    device_from_row,
    factors_from_row,
    factors_params,
    from_us,
    request_changes,
    request_from_row,
    request_params,
    to_json,
    to_us,
    user_from_row,
)
from store._sqlite_schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION
from store._sqlite_worker import SqliteWorker
from store.audit import GENESIS_HASH, canonical_json, chain_hash
from store.base import Store
from store.errors import DuplicateError, StoreError, StoreUnavailable
from store.models import (
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

__all__ = ["SqliteStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


# Expired single-use values, challenges and activation codes are deleted
# once every this many use_once() calls.
PURGE_EVERY = 256

# Columns the code relies on, by table (see _check_columns).
_EXPECTED_COLUMNS = {
    "clients": "client_id, name, api_key_hash, created_at, revoked_at",
    "users": USER_COLUMNS,
    "factors": FACTOR_COLUMNS,
    "activation_codes": "code_hash, user_id, expires_at, created_at, issued_by",
    "devices": DEVICE_COLUMNS,
    "credentials": CREDENTIAL_COLUMNS,
    "requests": REQUEST_COLUMNS,
    "audit": AUDIT_COLUMNS,
}

_DUPLICATE_ERRORS = frozenset(
    {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
)

_INSERT_REQUEST = f"""
INSERT INTO requests ({REQUEST_COLUMNS})
VALUES ({", ".join("?" * 23)})
ON CONFLICT (client_id, idempotency_key) WHERE idempotency_key IS NOT NULL
DO NOTHING
RETURNING {REQUEST_COLUMNS}
"""


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


class SqliteStore(Store):
    """The embedded backend; ``path`` may be ``":memory:"`` for tests."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        self._path = str(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._worker: SqliteWorker | None = None
        self._use_once_calls = 0

    def __repr__(self) -> str:
        return f"SqliteStore({self._path!r})"

    # -- plumbing -----------------------------------------------------------
    async def _run(self, job: Callable[[sqlite3.Connection], T], *, writes: bool) -> T:
        worker = self._worker
        if worker is None:
            raise StoreUnavailable("the SQLite store is not open")
        try:
            return await worker.run(job, writes=writes)
        except sqlite3.Error as e:
            raise _translate(e) from e

    async def _query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[sqlite3.Row]:
        """Run one statement; return its rows (``RETURNING`` included)."""
        writes = not sql.lstrip().upper().startswith("SELECT")
        return await self._run(
            lambda db: db.execute(sql, params).fetchall(), writes=writes
        )

    async def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        return await self._run(
            lambda db: int(db.execute(sql, params).rowcount), writes=True
        )

    # -- life cycle -----------------------------------------------------------
    async def open(self) -> None:
        if self._worker is not None:
            return
        worker = SqliteWorker(self._connect)
        try:
            await worker.start()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot open SQLite database: {e}") from e
        self._worker = worker
        logger.debug("opened SQLite store at %s", self._path)

    def _connect(self) -> sqlite3.Connection:
        """Open and prepare the connection (on the worker thread)."""
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=True)
        try:
            self._prepare(db)
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        rows = db.execute("PRAGMA journal_mode = WAL").fetchall()
        # With WAL, NORMAL never corrupts the file; a power cut (not a
        # process crash) may drop the last commits.
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        db.executescript(SCHEMA)
        db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        version_rows = db.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchall()

        journal_mode = rows[0][0] if rows else None
        if journal_mode != "wal" and self._path != ":memory:":
            logger.warning(
                "SQLite at %s runs in journal mode %s, not WAL",
                self._path,
                journal_mode,
            )

        version = int(version_rows[0][0])
        if version < SCHEMA_VERSION:
            self._migrate(db, version)
        self._check_columns(db)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {version} is newer than this code "
                f"supports ({SCHEMA_VERSION})"
            )

    def _migrate(self, db: sqlite3.Connection, version: int) -> None:
        """Bring a file of an older schema version up to this one."""
        db.execute("BEGIN IMMEDIATE")
        try:
            current = int(
                db.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'"
                ).fetchone()[0]
            )
            for step in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS.get(step, ()):
                    db.execute(statement)
            db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'",
                (str(SCHEMA_VERSION),),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        logger.warning(
            "upgraded the SQLite store at %s from schema version %s to %s",
            self._path,
            version,
            SCHEMA_VERSION,
        )

    def _check_columns(self, db: sqlite3.Connection) -> None:
        """Refuse a file whose tables lack columns this code reads and writes.

        ``CREATE TABLE IF NOT EXISTS`` leaves an older table as it was; a
        statement would later fail on it with a misleading error.
        """
        for table, columns in _EXPECTED_COLUMNS.items():
            try:
                db.execute(f"SELECT {columns} FROM {table} LIMIT 0")
            except sqlite3.OperationalError as e:
                raise StoreError(
                    f"the database at {self._path} was made by another version "
                    f"of this software ({table}: {e}); move it aside and run "
                    "`sigil init` again"
                ) from e

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        await worker.stop()
        logger.debug("closed SQLite store at %s", self._path)

    # -- settings -----------------------------------------------------------
    async def get_setting(self, key: str) -> str | None:
        rows = await self._query("SELECT value FROM settings WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def put_setting(self, key: str, value: str) -> None:
        await self._query(
            "INSERT INTO settings (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- clients --------------------------------------------------------------
    async def add_client(self, client: Client) -> None:
        await self._query(
            "INSERT INTO clients (client_id, name, api_key_hash, created_at)"
            " VALUES (?, ?, ?, ?)",
            (
                client.client_id,
                client.name,
                client.api_key_hash,
                to_us(client.created_at, "created_at"),
            ),
        )

    async def client_by_key_hash(self, api_key_hash: str) -> Client | None:
        rows = await self._query(
            "SELECT client_id, name, api_key_hash, created_at, revoked_at FROM clients"
            " WHERE api_key_hash = ?",
            (api_key_hash,),
        )
        return client_from_row(rows[0]) if rows else None

    async def revoke_client(self, client_id: str, *, now: datetime) -> Client | None:
        rows = await self._query(
            "UPDATE clients SET revoked_at = coalesce(revoked_at, ?)"
            " WHERE client_id = ?"
            " RETURNING client_id, name, api_key_hash, created_at, revoked_at",
            (to_us(now, "now"), client_id),
        )
        return client_from_row(rows[0]) if rows else None

    async def list_clients(self) -> list[Client]:
        rows = await self._query(
            "SELECT client_id, name, api_key_hash, created_at, revoked_at FROM clients"
            " ORDER BY created_at, client_id"
        )
        return [client_from_row(row) for row in rows]

    # -- users and activation codes -------------------------------------------
    async def add_user(self, user: User) -> None:
        await self._query(
            f"INSERT INTO users ({USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (
                user.user_id,
                user.display_name,
                user.key_algorithm,
                user.created_by,
                to_us(user.created_at, "created_at"),
                user.second_factor,
            ),
        )

    async def get_user(self, user_id: str) -> User | None:
        rows = await self._query(
            f"SELECT {USER_COLUMNS} FROM users WHERE user_id = ?", (user_id,)
        )
        return user_from_row(rows[0]) if rows else None

    async def list_users(self) -> list[User]:
        rows = await self._query(
            f"SELECT {USER_COLUMNS} FROM users ORDER BY created_at, user_id"
        )
        return [user_from_row(row) for row in rows]

    # -- second factors ---------------------------------------------------------
    async def get_factors(self, user_id: str) -> UserFactors | None:
        rows = await self._query(
            f"SELECT {FACTOR_COLUMNS} FROM factors WHERE user_id = ?", (user_id,)
        )
        return factors_from_row(rows[0]) if rows else None

    async def put_factors(self, factors: UserFactors) -> None:
        await self._query(
            f"INSERT OR REPLACE INTO factors ({FACTOR_COLUMNS}) VALUES (?, ?, ?, ?)",
            factors_params(factors),
        )

    async def raise_totp_step(self, user_id: str, step: int) -> None:
        await self._query(
            "UPDATE factors SET totp_last_step = ? WHERE user_id = ?"
            " AND (totp_last_step IS NULL OR totp_last_step < ?)",
            (step, user_id, step),
        )

    async def add_activation_code(self, code: ActivationCode) -> None:
        await self._query(
            "INSERT INTO activation_codes"
            " (code_hash, user_id, expires_at, created_at, issued_by)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET code_hash = excluded.code_hash,"
            " expires_at = excluded.expires_at, created_at = excluded.created_at,"
            " issued_by = excluded.issued_by",
            (
                code.code_hash,
                code.user_id,
                to_us(code.expires_at, "expires_at"),
                to_us(code.created_at, "created_at"),
                code.issued_by,
            ),
        )

    async def consume_activation_code(
        self, code_hash: str, *, now: datetime
    ) -> ActivationCode | None:
        # Deleting is the use: a second caller finds nothing. An expired
        # code is deleted too, since it can never be used again.
        now_us = to_us(now, "now")
        rows = await self._query(
            "DELETE FROM activation_codes WHERE code_hash = ?"
            " RETURNING code_hash, user_id, expires_at, created_at, issued_by",
            (code_hash,),
        )
        if not rows or rows[0]["expires_at"] <= now_us:
            return None
        row = rows[0]
        return ActivationCode(
            code_hash=row["code_hash"],
            user_id=row["user_id"],
            expires_at=from_us(row["expires_at"]),
            created_at=from_us(row["created_at"]),
            issued_by=row["issued_by"],
        )

    # -- devices --------------------------------------------------------------
    async def add_device(self, device: Device) -> None:
        push = device.push_subscription
        await self._query(
            f"INSERT INTO devices ({DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                device.device_id,
                device.user_id,
                to_json(device.public_key_jwk),
                None if push is None else to_json(push),
                DeviceStatus(device.status).value,
                device.name,
                to_us(device.created_at, "created_at"),
            ),
        )

    async def get_device(self, device_id: str) -> Device | None:
        rows = await self._query(
            f"SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?",
            (device_id,),
        )
        return device_from_row(rows[0]) if rows else None

    async def list_devices(self, *, user_id: str | None = None) -> list[Device]:
        if user_id is None:
            rows = await self._query(
                f"SELECT {DEVICE_COLUMNS} FROM devices ORDER BY created_at, device_id"
            )
        else:
            rows = await self._query(
                f"SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ?"
                " ORDER BY created_at, device_id",
                (user_id,),
            )
        return [device_from_row(row) for row in rows]

    async def set_device_status(
        self, device_id: str, status: DeviceStatus
    ) -> Device | None:
        rows = await self._query(
            f"UPDATE devices SET status = ? WHERE device_id = ?"
            f" RETURNING {DEVICE_COLUMNS}",
            (DeviceStatus(status).value, device_id),
        )
        if not rows:
            return None
        logger.debug("device %s is now %s", device_id, status)
        return device_from_row(rows[0])

    async def clear_push_subscription(self, device_id: str, endpoint: str) -> bool:
        # Only if the endpoint is unchanged: a device that re-subscribed in
        # the meantime keeps its new subscription (PUSH-2).
        rows = await self._query(
            "UPDATE devices SET push_subscription = NULL"
            " WHERE device_id = ?"
            " AND json_extract(push_subscription, '$.endpoint') = ?"
            " RETURNING device_id",
            (device_id, endpoint),
        )
        return bool(rows)

    # -- credentials ------------------------------------------------------------
    async def add_credential(self, credential: Credential) -> None:
        await self._query(
            f"INSERT INTO credentials ({CREDENTIAL_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            credential_params(credential),
        )

    async def get_credential(self, credential_id: str) -> Credential | None:
        rows = await self._query(
            f"SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE credential_id = ?",
            (credential_id,),
        )
        return credential_from_row(rows[0]) if rows else None

    async def list_credentials(self, *, user_id: str | None = None) -> list[Credential]:
        if user_id is None:
            rows = await self._query(
                f"SELECT {CREDENTIAL_COLUMNS} FROM credentials"
                " ORDER BY created_at, credential_id"
            )
        else:
            rows = await self._query(
                f"SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE user_id = ?"
                " ORDER BY created_at, credential_id",
                (user_id,),
            )
        return [credential_from_row(row) for row in rows]

    # -- single-use values ------------------------------------------------------
    async def use_once(self, scope: str, value: str, *, expires_at: datetime) -> bool:
        # An existing entry blocks the insert while it lives; once expired
        # the conflict turns into an update that takes the entry over.
        expires_us = to_us(expires_at, "expires_at")
        now_us = to_us(datetime.now(UTC), "now")
        rows = await self._query(
            "INSERT INTO used_values (scope, value, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (scope, value) DO UPDATE"
            " SET expires_at = excluded.expires_at"
            " WHERE used_values.expires_at <= ?"
            " RETURNING 1",
            (scope, value, expires_us, now_us),
        )

        self._use_once_calls += 1
        if self._use_once_calls % PURGE_EVERY == 0:
            await self._purge_expired(now_us)
        return bool(rows)

    async def clear_use_once(self, scope: str) -> int:
        return await self._execute("DELETE FROM used_values WHERE scope = ?", (scope,))

    async def _purge_expired(self, now_us: int) -> None:
        purged = 0
        for table in ("used_values", "challenges", "activation_codes"):
            purged += await self._execute(
                f"DELETE FROM {table} WHERE expires_at <= ?",
                (now_us,),
            )
        logger.debug("purged %s expired single-use entries", purged)

    async def put_challenge(self, challenge: str, *, expires_at: datetime) -> None:
        expires_us = to_us(expires_at, "expires_at")
        now_us = to_us(datetime.now(UTC), "now")
        rows = await self._query(
            "INSERT INTO challenges (challenge, expires_at) VALUES (?, ?)"
            " ON CONFLICT (challenge) DO UPDATE"
            " SET expires_at = excluded.expires_at"
            " WHERE challenges.expires_at <= ?"
            " RETURNING 1",
            (challenge, expires_us, now_us),
        )
        if not rows:
            raise DuplicateError("this challenge is already outstanding")

    async def take_challenge(self, challenge: str, *, now: datetime) -> bool:
        now_us = to_us(now, "now")
        rows = await self._query(
            "DELETE FROM challenges WHERE challenge = ? RETURNING expires_at",
            (challenge,),
        )
        return bool(rows) and rows[0][0] > now_us

    # -- signature requests -----------------------------------------------------
    async def create_request(self, request: SignatureRequest) -> SignatureRequest:
        params = request_params(request)
        key = request.idempotency_key

        # A lost race on the idempotency key inserts nothing; the winner's
        # row is then read back. Retried in case it was purged in between.
        for _ in range(3):
            rows = await self._query(_INSERT_REQUEST, params)
            if rows:
                logger.debug("created request %s", request.request_id)
                return request_from_row(rows[0])
            if key is None:  # pragma: no cover - only a keyed insert skips
                break

            rows = await self._query(
                f"SELECT {REQUEST_COLUMNS} FROM requests"
                " WHERE client_id = ? AND idempotency_key = ?",
                (request.client_id, key),
            )
            if rows:
                existing = request_from_row(rows[0])
                logger.debug(
                    "idempotent create returned request %s", existing.request_id
                )
                return existing
        raise StoreError(f"request {request.request_id} was neither stored nor found")

    async def get_request(self, request_id: str) -> SignatureRequest | None:
        rows = await self._query(
            f"SELECT {REQUEST_COLUMNS} FROM requests WHERE request_id = ?",
            (request_id,),
        )
        return request_from_row(rows[0]) if rows else None

    async def list_requests(
        self,
        *,
        user_id: str | None = None,
        client_id: str | None = None,
        states: Collection[RequestState] | None = None,
        limit: int = 100,
    ) -> list[SignatureRequest]:
        check_limit(limit)
        where: list[str] = []
        params: list[Any] = []
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if client_id is not None:
            where.append("client_id = ?")
            params.append(client_id)
        if states is not None:
            values = sorted({RequestState(s).value for s in states})
            if not values:
                return []
            where.append(f"state IN ({_placeholders(len(values))})")
            params.extend(values)

        sql = f"SELECT {REQUEST_COLUMNS} FROM requests"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, request_id DESC LIMIT ?"
        params.append(limit)
        return [request_from_row(row) for row in await self._query(sql, params)]

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
        states = sorted(s.value for s in check_transition(from_states, to_state))
        to_state = RequestState(to_state)
        fields = check_updates(updates)
        now_us = to_us(now, "now")
        if not states:
            return None

        assignments = ["state = ?", "updated_at = ?"]
        params: list[Any] = [to_state.value, now_us]
        if to_state.is_final:
            assignments.append("finished_at = ?")
            params.append(now_us)
        # Column names come from UPDATABLE_FIELDS, never from the caller.
        for name in sorted(fields):
            value = fields[name]
            assignments.append(f"{name} = ?")
            params.append(request_changes({name: value})[name])

        condition = f"request_id = ? AND state IN ({_placeholders(len(states))})"
        params.append(request_id)
        params.extend(states)
        if not_expired:
            condition += " AND expires_at > ?"
            params.append(now_us)

        sql = (
            f"UPDATE requests SET {', '.join(assignments)}"
            f" WHERE {condition} RETURNING {REQUEST_COLUMNS}"
        )

        def move(db: sqlite3.Connection) -> list[sqlite3.Row]:
            # The move and its audit record commit together, or neither does.
            rows = db.execute(sql, params).fetchall()
            if rows and audit is not None:
                _append_audit(db, now_us, audit)
            return rows

        rows = await self._run(move, writes=True)
        if not rows:
            logger.debug("request %s not moved to %s", request_id, to_state.value)
            return None
        logger.debug("request %s moved to %s", request_id, to_state.value)
        return request_from_row(rows[0])

    async def update_request(
        self,
        request_id: str,
        change: Callable[[SignatureRequest], Changes | None],
        *,
        now: datetime,
        audit: AuditEvent | None = None,
    ) -> SignatureRequest | None:
        now_us = to_us(now, "now")

        def apply(db: sqlite3.Connection) -> list[sqlite3.Row]:
            # Read, decide and write in one job: the worker's transaction
            # keeps every other writer out in between.
            rows = db.execute(
                f"SELECT {REQUEST_COLUMNS} FROM requests WHERE request_id = ?",
                (request_id,),
            ).fetchall()
            if not rows:
                return []
            changes = change(request_from_row(rows[0]))
            if changes is None:
                return []
            columns = request_changes(changes)
            # Column names come from _sqlite_rows' fixed table, never a caller.
            assignments = ", ".join(f"{name} = ?" for name in columns)
            rows = db.execute(
                f"UPDATE requests SET {assignments} WHERE request_id = ?"
                f" RETURNING {REQUEST_COLUMNS}",
                (*columns.values(), request_id),
            ).fetchall()
            if rows and audit is not None:
                _append_audit(db, now_us, audit)
            return rows

        rows = await self._run(apply, writes=True)
        return request_from_row(rows[0]) if rows else None

    async def expire_due(self, *, now: datetime) -> list[str]:
        now_us = to_us(now, "now")
        rows = await self._query(
            "UPDATE requests SET state = 'expired', updated_at = ?, finished_at = ?"
            " WHERE (state = 'pending' AND expires_at <= ?)"
            " OR (state = 'approved' AND kind = 'csc' AND authorized_until <= ?)"
            " RETURNING request_id",
            (now_us, now_us, now_us, now_us),
        )
        ids = [str(row[0]) for row in rows]
        if ids:
            logger.debug("expired %s pending requests", len(ids))
        return ids

    async def fail_stale_approved(
        self, *, before: datetime, now: datetime
    ) -> list[str]:
        before_us = to_us(before, "before")
        now_us = to_us(now, "now")
        rows = await self._query(
            "UPDATE requests SET state = 'failed', updated_at = ?, finished_at = ?,"
            " error = coalesce(error, ?)"
            " WHERE state = 'approved' AND kind = 'rp' AND updated_at < ?"
            " RETURNING request_id",
            (now_us, now_us, STALE_APPROVAL_ERROR, before_us),
        )
        ids = [str(row[0]) for row in rows]
        if ids:
            logger.warning("failed %s approved requests left unsigned", len(ids))
        return ids

    async def purge_finished(self, *, before: datetime) -> int:
        count = await self._execute(
            "DELETE FROM requests WHERE finished_at IS NOT NULL AND finished_at < ?",
            (to_us(before, "before"),),
        )
        if count:
            logger.debug("purged %s finished requests", count)
        return count

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
        # The stored text is what gets hashed, so a record read back later
        # verifies exactly (tuples become lists, and so on, before hashing).
        entry = AuditEvent(event, actor, subject, outcome, dict(details or {}))
        stamp = to_us(time, "time")
        return await self._run(lambda db: _append_audit(db, stamp, entry), writes=True)

    async def audit_records(
        self, *, after_seq: int = 0, limit: int = 1000
    ) -> Sequence[AuditRecord]:
        check_limit(limit)
        rows = await self._query(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [audit_from_row(row) for row in rows]


def _append_audit(
    db: sqlite3.Connection, time_us: int, entry: AuditEvent
) -> AuditRecord:
    """Append one link; runs inside the worker's write transaction, so no
    other append, in this process or another, comes between read and write."""
    details_json = canonical_json(entry.details)
    details = json.loads(details_json)  # what is stored is what is hashed
    when = from_us(time_us)
    head = db.execute(
        "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
    digest = chain_hash(
        prev_hash=prev_hash,
        seq=seq,
        time=when,
        event=entry.event,
        actor=entry.actor,
        subject=entry.subject,
        outcome=entry.outcome,
        details=details,
    )
    db.execute(
        "INSERT INTO audit (seq, time, event, actor, subject, outcome, details,"
        " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            seq,
            time_us,
            entry.event,
            entry.actor,
            entry.subject,
            entry.outcome,
            details_json,
            prev_hash,
            digest,
        ),
    )
    return AuditRecord(
        seq=seq,
        time=when,
        event=entry.event,
        actor=entry.actor,
        subject=entry.subject,
        outcome=entry.outcome,
        details=details,
        prev_hash=prev_hash,
        hash=digest,
    )


def _translate(e: sqlite3.Error) -> StoreError:
    """Turn a driver error into the store's own (errors.py)."""
    if isinstance(e, sqlite3.IntegrityError):
        if getattr(e, "sqlite_errorname", None) in _DUPLICATE_ERRORS:
            return DuplicateError(str(e))
        return StoreError(f"integrity check failed: {e}")
    if isinstance(e, sqlite3.OperationalError):
        return StoreUnavailable(f"SQLite: {e}")
    return StoreError(f"SQLite: {e}")
