-- Terminal sessions (websh), their share links and participants, and
-- workspace settings. Same schema for SQLite and PostgreSQL.

CREATE TABLE websh_sessions (
    id               TEXT PRIMARY KEY,
    server_id        TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    username         TEXT NOT NULL,
    groupname        TEXT,
    rows_            BIGINT NOT NULL,
    cols             BIGINT NOT NULL,
    status           TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    closed_at        BIGINT,
    exit_code        BIGINT,
    close_reason     TEXT,
    output_bytes     BIGINT NOT NULL DEFAULT 0,
    token_id         TEXT,
    client_ip        TEXT,
    last_activity_at BIGINT NOT NULL
);
CREATE INDEX websh_sessions_status ON websh_sessions (status);
CREATE INDEX websh_sessions_user ON websh_sessions (user_id);

CREATE TABLE websh_shares (
    id            TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    read_only     BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);

CREATE TABLE websh_participants (
    session_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    read_only  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    share_id   TEXT NOT NULL,
    PRIMARY KEY (session_id, user_id)
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
