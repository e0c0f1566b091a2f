-- Per-token access control lists (see crates/server/src/acl.rs). Same
-- schema for SQLite and PostgreSQL. A token with at least one entry of a
-- kind is denied everything of that kind that no entry allows.

-- Commands a token may run: `line` is a pattern with `*` wildcards;
-- `username`, when set, is the only account it may run as.
CREATE TABLE token_command_acls (
    id         TEXT PRIMARY KEY,
    token_id   TEXT NOT NULL REFERENCES api_tokens(id) ON DELETE CASCADE,
    line       TEXT NOT NULL,
    username   TEXT,
    created_by TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX token_command_acls_token ON token_command_acls (token_id);

-- Servers a token may reach (by server id).
CREATE TABLE token_server_acls (
    id         TEXT PRIMARY KEY,
    token_id   TEXT NOT NULL REFERENCES api_tokens(id) ON DELETE CASCADE,
    server_id  TEXT NOT NULL,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (token_id, server_id)
);

-- Paths a token may transfer: `path` is an absolute pattern with `*`
-- wildcards; `action` is upload, download or *.
CREATE TABLE token_file_acls (
    id         TEXT PRIMARY KEY,
    token_id   TEXT NOT NULL REFERENCES api_tokens(id) ON DELETE CASCADE,
    path       TEXT NOT NULL,
    action     TEXT NOT NULL,
    created_by TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX token_file_acls_token ON token_file_acls (token_id);
