-- Login throttling, MFA (TOTP, WebAuthn, recovery codes) and the generic
-- workspace settings store (see crates/server/src/mfa.rs and settings.rs).
-- Same schema for SQLite and PostgreSQL.

-- When the session last proved a second factor (NULL: never), and whether
-- it may only enroll MFA (the workspace enforces MFA and the user had none
-- at login).
ALTER TABLE sessions ADD COLUMN mfa_verified_at BIGINT;
ALTER TABLE sessions ADD COLUMN mfa_enroll_only BIGINT NOT NULL DEFAULT 0;

-- Failed logins (wrong password or wrong second factor), by subject:
-- 'user:NAME' or 'ip:ADDR'. Read by the throttle, pruned after a day.
CREATE TABLE login_failures (
    id      TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    ts      BIGINT NOT NULL
);
CREATE INDEX login_failures_subject ON login_failures (subject, ts);
CREATE INDEX login_failures_ts ON login_failures (ts);

-- One TOTP secret per user (base32; a TOTP secret cannot be hashed: the
-- gateway must compute codes from it). `confirmed` = 1 once a code proved
-- the enrollment; `last_step` is the last accepted 30 s step (a code is
-- never accepted twice).
CREATE TABLE mfa_totp (
    user_id      TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    secret       TEXT NOT NULL,
    confirmed    BIGINT NOT NULL DEFAULT 0,
    last_step    BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    confirmed_at BIGINT
);

-- WebAuthn credentials (security keys and passkeys): `passkey` is
-- webauthn-rs's Passkey as JSON (public key, counter; no secret).
CREATE TABLE mfa_webauthn (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    credential_id TEXT NOT NULL UNIQUE,
    passkey       TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
CREATE INDEX mfa_webauthn_user ON mfa_webauthn (user_id);

-- One-time recovery codes, SHA-256 of the normalised code.
CREATE TABLE mfa_recovery_codes (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX mfa_recovery_codes_user ON mfa_recovery_codes (user_id);

-- Short-lived MFA state: the login step's mfa_token ('login', only its
-- SHA-256 kept, single use) and pending WebAuthn ceremonies
-- ('webauthn_reg', 'webauthn_auth'; `state` is the server-side ceremony
-- state as JSON). `session_id` ties a ceremony to the session that began it.
CREATE TABLE mfa_challenges (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash TEXT UNIQUE,
    session_id TEXT,
    state      TEXT NOT NULL DEFAULT '{}',
    client_ip  TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX mfa_challenges_expires ON mfa_challenges (expires_at);

-- Workspace-wide settings, one JSON value per key (settings.rs).
CREATE TABLE workspace_settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_by TEXT,
    updated_at BIGINT NOT NULL
);
