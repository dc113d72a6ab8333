-- edgeguard portal store, migration 0001: the Grove Portal tables PEAS reads.
--
-- This is the subset of the Grove Portal DB that PEAS's `SelectPortalApps` query touches
-- (PEAS `postgres/grove/sqlc/grove_schema.sql`), made idempotent. Real Portal databases
-- already have these tables (with more columns): run it only for tests and demos
-- (`migrate(.., include_grove_schema = true)`). Nothing here alters an existing table.

CREATE TABLE IF NOT EXISTS accounts (
    id                 VARCHAR(10) PRIMARY KEY,
    plan_type          VARCHAR(25),
    monthly_user_limit INT
);

CREATE TABLE IF NOT EXISTS portal_applications (
    id         VARCHAR(24) PRIMARY KEY UNIQUE,
    account_id VARCHAR(10) REFERENCES accounts (id),
    deleted    BOOLEAN     NOT NULL DEFAULT false,
    deleted_at TIMESTAMPTZ NULL
);

CREATE TABLE IF NOT EXISTS portal_application_settings (
    id                  SERIAL PRIMARY KEY,
    application_id      VARCHAR(24) NOT NULL UNIQUE REFERENCES portal_applications (id) ON DELETE CASCADE,
    secret_key          VARCHAR(64),
    secret_key_required BOOLEAN
);

-- The incremental re-query filters on account_id; the Portal DB may lack this index.
CREATE INDEX IF NOT EXISTS portal_applications_account_id_idx ON portal_applications (account_id);
