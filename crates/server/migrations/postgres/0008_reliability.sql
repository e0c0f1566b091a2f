-- Exactly-once command submission: a client's `Idempotency-Key` header is
-- remembered with the command it created, per person (NULLs are distinct,
-- so commands without a key never collide). Same schema for SQLite and
-- PostgreSQL.
ALTER TABLE commands ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX commands_idempotency ON commands (requested_by, idempotency_key);

-- A command ACL entry may name the primary group its commands run with;
-- without one, only the account's own default group is allowed.
ALTER TABLE token_command_acls ADD COLUMN groupname TEXT;
