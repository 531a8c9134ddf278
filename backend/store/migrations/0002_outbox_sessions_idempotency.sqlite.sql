-- The event outbox (written in the same transaction as each change, published by the relay), idempotency
-- records of change requests, and sign-in sessions with their refresh values.
ALTER TABLE projects ADD COLUMN outbox_seq INTEGER NOT NULL DEFAULT 0;

CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id TEXT NOT NULL,
    pseq       INTEGER NOT NULL,          -- contiguous per project: the relay publishes in this order
    event_type TEXT NOT NULL,
    data       TEXT NOT NULL,        -- JSON
    created_at INTEGER NOT NULL,
    sent_at    INTEGER,
    UNIQUE (project_id, pseq)
);
CREATE INDEX outbox_unsent ON outbox(project_id, pseq) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_at ON outbox(sent_at) WHERE sent_at IS NOT NULL;

CREATE TABLE idempotency (
    user_id      TEXT NOT NULL,
    mutation_id  TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status       INTEGER NOT NULL,
    body         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (user_id, mutation_id)
);
CREATE INDEX idempotency_created_at ON idempotency(created_at);

CREATE TABLE auth_sessions (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at     INTEGER NOT NULL,
    max_expires_at INTEGER NOT NULL,      -- DASHBOARD_SESSION_MAX_S after sign-in
    expires_at     INTEGER NOT NULL,      -- the current refresh value's expiry (sliding)
    revoked_at     INTEGER,
    revoked_reason TEXT
);
CREATE INDEX auth_sessions_by_user ON auth_sessions(user_id);
CREATE INDEX auth_sessions_expires_at ON auth_sessions(max_expires_at);

CREATE TABLE refresh_tokens (
    hash       TEXT PRIMARY KEY,     -- sha256 of the opaque cookie value; the value itself is never stored
    session_id TEXT NOT NULL REFERENCES auth_sessions(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    rotated_at INTEGER                    -- set when exchanged; presenting it again is reuse
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens(session_id);
