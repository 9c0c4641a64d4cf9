"""Tables of the embedded SQLite store.

Times are INTEGER microseconds since the Unix epoch (UTC), so ``<`` and
``>`` in SQL compare instants exactly. JSON columns hold compact JSON text.
"""

from __future__ import annotations

SCHEMA_VERSION = 2

# Run inside BEGIN IMMEDIATE so two processes opening a new file at the
# same moment do not interleave their CREATE statements.
SCHEMA = """
BEGIN IMMEDIATE;

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS clients (
    client_id    TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    api_key_hash TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);

CREATE TABLE IF NOT EXISTS users (
    user_id       TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    key_algorithm TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    second_factor TEXT NOT NULL DEFAULT 'none'
);

-- A signer's second factors (AUTH-3): an Argon2 PIN hash, a TOTP secret
-- and the last TOTP time step accepted.
CREATE TABLE IF NOT EXISTS factors (
    user_id          TEXT PRIMARY KEY REFERENCES users (user_id),
    pin_hash         TEXT,
    totp_secret      TEXT,
    totp_last_step   INTEGER
);

CREATE TABLE IF NOT EXISTS activation_codes (
    code_hash  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL UNIQUE REFERENCES users (user_id),
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    issued_by  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS activation_codes_expiry
    ON activation_codes (expires_at);


CREATE TABLE IF NOT EXISTS devices (
    device_id         TEXT PRIMARY KEY,
    user_id           TEXT NOT NULL REFERENCES users (user_id),
    public_key_jwk    TEXT NOT NULL,
    push_subscription TEXT,
    status            TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    name              TEXT NOT NULL,
    created_at        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_user ON devices (user_id);

-- chain_der: JSON list of base64 DER certificates, issuer first.
CREATE TABLE IF NOT EXISTS credentials (
    credential_id   TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users (user_id),
    key_id          TEXT NOT NULL,
    key_algorithm   TEXT NOT NULL,
    certificate_der BLOB NOT NULL,
    chain_der       TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS credentials_user ON credentials (user_id);

CREATE TABLE IF NOT EXISTS used_values (
    scope      TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (scope, value)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS used_values_expiry ON used_values (expires_at);

CREATE TABLE IF NOT EXISTS challenges (
    challenge  TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS challenges_expiry ON challenges (expires_at);

-- hashes, signatures: JSON lists of str.
CREATE TABLE IF NOT EXISTS requests (
    request_id        TEXT PRIMARY KEY,
    client_id         TEXT NOT NULL REFERENCES clients (client_id),
    user_id           TEXT NOT NULL REFERENCES users (user_id),
    credential_id     TEXT NOT NULL REFERENCES credentials (credential_id),
    hash_algorithm    TEXT NOT NULL,
    hashes            TEXT NOT NULL,
    display_text      TEXT NOT NULL,
    nonce             TEXT NOT NULL,
    verification_code TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN (
        'pending', 'approved', 'signed', 'rejected', 'cancelled', 'expired',
        'failed'
    )),
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    idempotency_key   TEXT,
    signatures        TEXT,
    sad_digest        TEXT,
    error             TEXT,
    finished_at       INTEGER,
    kind              TEXT NOT NULL DEFAULT 'rp',
    num_signatures    INTEGER NOT NULL DEFAULT 0,
    used_hashes       TEXT NOT NULL DEFAULT '[]',
    signed_hashes     TEXT NOT NULL DEFAULT '[]',
    authorized_until  INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS requests_idempotency
    ON requests (client_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS requests_user_state ON requests (user_id, state);
CREATE INDEX IF NOT EXISTS requests_state_expiry ON requests (state, expires_at);
CREATE INDEX IF NOT EXISTS requests_client_created
    ON requests (client_id, created_at);
CREATE INDEX IF NOT EXISTS requests_finished
    ON requests (finished_at) WHERE finished_at IS NOT NULL;

-- details: canonical JSON (store.audit.canonical_json), the text that was
-- hashed. Append-only (AUD-3): the triggers refuse edits through SQL.
CREATE TABLE IF NOT EXISTS audit (
    seq       INTEGER PRIMARY KEY,
    time      INTEGER NOT NULL,
    event     TEXT NOT NULL,
    actor     TEXT NOT NULL,
    subject   TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;

COMMIT;
"""

# Steps from each older version to the next, run in order by the store when
# it opens a file of that version (the tables above only create what is
# missing, never change a table that exists).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE users ADD COLUMN second_factor TEXT NOT NULL DEFAULT 'none'",
        "ALTER TABLE requests ADD COLUMN kind TEXT NOT NULL DEFAULT 'rp'",
        "ALTER TABLE requests ADD COLUMN num_signatures INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE requests ADD COLUMN used_hashes TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE requests ADD COLUMN signed_hashes TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE requests ADD COLUMN authorized_until INTEGER",
    ),
}
