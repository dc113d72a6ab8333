-- edgeguard portal store, migration 0004: usage metering (edgeguard counts what it lets through).
--
-- With metering on (`EDGEGUARD_METERING=true` on `edgeguard authz`), the portal-auth filters
-- and `edgeguard authz` count every request a portal-app verdict allows, and authz replicas
-- add those counts here, batched (one statement per flush):
--
--   account_monthly_usage.metered_relays   edgeguard's count for (account, month). The
--       existing `relays` column stays the operator's: an external pipeline keeps writing it
--       exactly as before (absolute totals or increments), edgeguard never touches it, and
--       edgeguard's flushes never overwrite it. What the store enforces is the sum
--       `relays + metered_relays`.
--   edgeguard_app_monthly_usage            the same counts per app (for the usage endpoint
--       and dashboards; not used for enforcement).
--   edgeguard_usage_reports                one row per applied report `(reporter, seq)`: a
--       report that is retried (its acknowledgement was lost, or it went to another authz
--       replica) finds its row and is not applied again. Rows older than 35 days are
--       deleted by the flushes.
--
-- `updated_at` (index below) lets every authz replica poll just the rows changed in the last
-- seconds, so a quota crossed through one replica is enforced by all of them within ~1 s.
--
-- Idempotent. Also widens account_monthly_usage.account_id to TEXT (no table rewrite), so
-- an account id longer than the Grove schema's 10 characters cannot make a flush fail.

ALTER TABLE account_monthly_usage ALTER COLUMN account_id TYPE TEXT;
ALTER TABLE account_monthly_usage ADD COLUMN IF NOT EXISTS metered_relays BIGINT NOT NULL DEFAULT 0;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'account_monthly_usage_metered_not_negative') THEN
        ALTER TABLE account_monthly_usage
            ADD CONSTRAINT account_monthly_usage_metered_not_negative CHECK (metered_relays >= 0);
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS account_monthly_usage_month_updated_idx
    ON account_monthly_usage (month, updated_at);

CREATE TABLE IF NOT EXISTS edgeguard_app_monthly_usage (
    app_id     TEXT        NOT NULL,
    month      DATE        NOT NULL,
    account_id TEXT        NOT NULL DEFAULT '',
    relays     BIGINT      NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, month),
    CONSTRAINT edgeguard_app_monthly_usage_month_is_first_day CHECK (EXTRACT(DAY FROM month) = 1)
);
CREATE INDEX IF NOT EXISTS edgeguard_app_monthly_usage_account_idx
    ON edgeguard_app_monthly_usage (account_id, month);

CREATE TABLE IF NOT EXISTS edgeguard_usage_reports (
    reporter   TEXT        NOT NULL,
    seq        BIGINT      NOT NULL,
    relays     BIGINT      NOT NULL,
    applied_by TEXT        NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (reporter, seq)
);
CREATE INDEX IF NOT EXISTS edgeguard_usage_reports_applied_at_idx
    ON edgeguard_usage_reports (applied_at);
