-- UIDs and GIDs are never given twice: files a deleted person or group
-- left on servers must not pass to whoever is created next. `last` is the
-- highest ever given, deleted ones included. Same schema for SQLite and
-- PostgreSQL.
CREATE TABLE id_high_water (
    kind TEXT PRIMARY KEY,
    last BIGINT NOT NULL
);
INSERT INTO id_high_water (kind, last) SELECT 'uid', COALESCE(MAX(uid), 0) FROM users;
INSERT INTO id_high_water (kind, last) SELECT 'gid', COALESCE(MAX(gid), 0) FROM iam_groups;
