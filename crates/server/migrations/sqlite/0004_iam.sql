-- People and groups (see crates/server/src/iam.rs). Same schema for SQLite
-- and PostgreSQL.

-- Central identity on servers: every person has one UID, and a private
-- group with GID = UID. Assigned by the gateway (iam::assign_ids), never
-- reused while the row exists.
ALTER TABLE users ADD COLUMN uid BIGINT;
ALTER TABLE users ADD COLUMN shell TEXT NOT NULL DEFAULT '/bin/bash';
ALTER TABLE users ADD COLUMN email TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN full_name TEXT NOT NULL DEFAULT '';
-- Service identities (applications): no password, own `alpst-` tokens.
ALTER TABLE users ADD COLUMN is_service BIGINT NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX users_uid ON users (uid);

-- Groups grant reach: a member reaches exactly the servers of their groups.
-- `gid` is the group's GID on servers (a supplementary group of members).
CREATE TABLE iam_groups (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    gid          BIGINT NOT NULL UNIQUE,
    created_by   TEXT,
    created_at   BIGINT NOT NULL
);

-- role: owner | manager | member.
CREATE TABLE memberships (
    id         TEXT PRIMARY KEY,
    group_id   TEXT NOT NULL REFERENCES iam_groups(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role       TEXT NOT NULL,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (group_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

CREATE TABLE group_servers (
    group_id   TEXT NOT NULL REFERENCES iam_groups(id) ON DELETE CASCADE,
    server_id  TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, server_id)
);
CREATE INDEX group_servers_server ON group_servers (server_id);

-- One-time invitation links; only the hash of the key is kept.
CREATE TABLE invitations (
    id          TEXT PRIMARY KEY,
    key_hash    TEXT NOT NULL UNIQUE,
    email       TEXT NOT NULL DEFAULT '',
    username    TEXT,
    is_staff    BIGINT NOT NULL DEFAULT 0,
    group_id    TEXT REFERENCES iam_groups(id) ON DELETE CASCADE,
    role        TEXT NOT NULL DEFAULT 'member',
    created_by  TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    accepted_at BIGINT,
    accepted_by TEXT
);
