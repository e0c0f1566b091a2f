-- Alpacon gateway schema, PostgreSQL flavour. Keep in step with
-- ../sqlite/0001_initial.sql: same tables, columns and indexes.
-- Portable types only (see ARCHITECTURE.md "Storage"): TEXT ids, BIGINT unix
-- milliseconds, BIGINT 0/1 booleans, BYTEA binary.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    is_superuser  BIGINT NOT NULL DEFAULT 0,
    is_staff      BIGINT NOT NULL DEFAULT 0,
    is_active     BIGINT NOT NULL DEFAULT 1,
    created_at    BIGINT NOT NULL
);

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key_hash     TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    scopes       TEXT NOT NULL DEFAULT '[]',
    enabled      BIGINT NOT NULL DEFAULT 1,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT,
    UNIQUE (user_id, name)
);

CREATE TABLE registration_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    key_hash   TEXT NOT NULL UNIQUE,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    max_uses   BIGINT,
    uses       BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE servers (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    public_key    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    registered_by TEXT,
    is_connected  BIGINT NOT NULL DEFAULT 0,
    connected_at  BIGINT,
    last_seen_at  BIGINT,
    remote_ip     TEXT,
    hostname      TEXT NOT NULL DEFAULT '',
    os            TEXT NOT NULL DEFAULT '',
    kernel        TEXT NOT NULL DEFAULT '',
    arch          TEXT NOT NULL DEFAULT '',
    cpus          BIGINT NOT NULL DEFAULT 0,
    memory_bytes  BIGINT NOT NULL DEFAULT 0,
    agent_version TEXT NOT NULL DEFAULT ''
);

CREATE TABLE commands (
    id               TEXT PRIMARY KEY,
    server_id        TEXT NOT NULL,
    line             TEXT NOT NULL,
    username         TEXT NOT NULL,
    groupname        TEXT,
    env              TEXT NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL,
    requested_by     TEXT,
    token_id         TEXT,
    client_ip        TEXT,
    created_at       BIGINT NOT NULL,
    delivered_at     BIGINT,
    finished_at      BIGINT,
    exit_code        BIGINT,
    elapsed_ms       BIGINT,
    output           BYTEA,
    output_truncated BIGINT NOT NULL DEFAULT 0,
    error_code       TEXT,
    error_detail     TEXT
);
CREATE INDEX commands_server_status ON commands (server_id, status);
CREATE INDEX commands_created ON commands (created_at);

CREATE TABLE transfers (
    id           TEXT PRIMARY KEY,
    server_id    TEXT NOT NULL,
    direction    TEXT NOT NULL,
    path         TEXT NOT NULL,
    username     TEXT NOT NULL,
    requested_by TEXT,
    token_id     TEXT,
    client_ip    TEXT,
    status       TEXT NOT NULL,
    bytes        BIGINT NOT NULL DEFAULT 0,
    sha256       TEXT,
    error        TEXT,
    created_at   BIGINT NOT NULL,
    finished_at  BIGINT
);

CREATE TABLE audit_events (
    seq            BIGSERIAL PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    ts             BIGINT NOT NULL,
    action         TEXT NOT NULL,
    result         TEXT NOT NULL,
    actor_user_id  TEXT,
    actor_username TEXT,
    token_id       TEXT,
    token_name     TEXT,
    server_id      TEXT,
    server_name    TEXT,
    client_ip      TEXT,
    detail         TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_action ON audit_events (action);
CREATE INDEX audit_events_actor ON audit_events (actor_user_id);
CREATE INDEX audit_events_server ON audit_events (server_id);
