-- Managed accounts on servers (see crates/server/src/accounts.rs). Same
-- schema for SQLite and PostgreSQL.
--
-- Where a person's own account was provisioned, so that disabling or
-- deleting them (or their losing reach) locks it there. No foreign key to
-- users: the row outlives a deleted user until the lock is delivered.
-- state: active | lock_pending | remove_pending | locked | removed.
CREATE TABLE server_accounts (
    server_id  TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL,
    username   TEXT NOT NULL,
    uid        BIGINT NOT NULL,
    state      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (server_id, user_id)
);
CREATE INDEX server_accounts_user ON server_accounts (user_id);
CREATE INDEX server_accounts_pending ON server_accounts (server_id, state);
