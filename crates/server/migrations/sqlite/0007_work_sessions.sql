-- Work sessions (see crates/server/src/work_sessions/). Same schema for
-- SQLite and PostgreSQL.

CREATE TABLE work_sessions (
    id            TEXT PRIMARY KEY,
    requester_id  TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    purpose       TEXT NOT NULL,
    -- JSON arrays: scopes (websh, command, file, sudo, tunnel) and the
    -- commands sudo is limited to (empty: any).
    scopes        TEXT NOT NULL,
    sudo_commands TEXT NOT NULL DEFAULT '[]',
    status        TEXT NOT NULL,
    starts_at     BIGINT,
    duration_ms   BIGINT NOT NULL,
    extension_ms  BIGINT,
    created_at    BIGINT NOT NULL,
    decided_at    BIGINT,
    decided_by    TEXT,
    decision_note TEXT,
    activated_at  BIGINT,
    expires_at    BIGINT,
    ended_at      BIGINT,
    end_reason    TEXT
);
CREATE INDEX work_sessions_status ON work_sessions (status);
CREATE INDEX work_sessions_requester ON work_sessions (requester_id);

CREATE TABLE work_session_servers (
    session_id TEXT NOT NULL REFERENCES work_sessions(id) ON DELETE CASCADE,
    server_id  TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    PRIMARY KEY (session_id, server_id)
);

-- Everything done inside a session carries its id, for the timeline.
ALTER TABLE websh_sessions ADD COLUMN work_session_id TEXT;
ALTER TABLE commands ADD COLUMN work_session_id TEXT;
ALTER TABLE transfers ADD COLUMN work_session_id TEXT;
ALTER TABLE audit_events ADD COLUMN work_session_id TEXT;
CREATE INDEX websh_sessions_ws ON websh_sessions (work_session_id);
CREATE INDEX commands_ws ON commands (work_session_id);
CREATE INDEX transfers_ws ON transfers (work_session_id);
CREATE INDEX audit_events_ws ON audit_events (work_session_id);

-- Sudo granted by sessions, per server: the agent keeps a sudoers drop-in
-- for each active grant and removes the rest (full sync on every change
-- and every connection).
CREATE TABLE sudo_grants (
    id         TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES work_sessions(id) ON DELETE CASCADE,
    server_id  TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    username   TEXT NOT NULL,
    commands   TEXT NOT NULL DEFAULT '[]',
    expires_at BIGINT NOT NULL,
    active     BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    UNIQUE (session_id, server_id)
);
CREATE INDEX sudo_grants_server ON sudo_grants (server_id, active);
