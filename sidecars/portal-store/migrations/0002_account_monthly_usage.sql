-- edgeguard portal store, migration 0002: per-account monthly relay usage.
--
-- PEAS read usage from BigQuery (`SUM(txs_cnt + errs_cnt)` per account since the first day
-- of the current UTC month). edgeguard reads it from this table instead; whatever meters
-- relays (a batch job, a stream consumer, PATH's data pipeline) upserts into it.
--
--   account_id  the Portal account (`accounts.id`; no foreign key, so usage can be written
--               before or independently of the account rows)
--   month       the first day of the UTC month the relays belong to (e.g. 2026-11-01)
--   relays      relays served to the account in that month so far (successes + errors)
--   updated_at  when the row was last written (informational)
--
-- The store reads, every RATE_LIMIT_STORE_REFRESH_INTERVAL (default 5 m), only the rows of
-- the current UTC month (by edgeguard authz's clock; migration 0004 adds the metered_relays
-- column edgeguard's own metering writes, summed with relays):
--
--   SELECT account_id, relays FROM account_monthly_usage WHERE month = $1::date;
--
-- so quotas reset by themselves when the month changes. An account is limited (429) when
-- relays > its monthly limit (strictly greater; PLAN_FREE: 1,000,000; PLAN_UNLIMITED: the
-- account's positive monthly_user_limit). Writers typically do:
--
--   INSERT INTO account_monthly_usage (account_id, month, relays)
--   VALUES ($1, date_trunc('month', now() AT TIME ZONE 'UTC')::date, $2)
--   ON CONFLICT (account_id, month)
--   DO UPDATE SET relays = account_monthly_usage.relays + EXCLUDED.relays, updated_at = now();
--
-- Old months can be deleted at will; the store never reads them.

CREATE TABLE IF NOT EXISTS account_monthly_usage (
    account_id VARCHAR(10) NOT NULL,
    month      DATE        NOT NULL,
    relays     BIGINT      NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, month),
    CONSTRAINT account_monthly_usage_month_is_first_day CHECK (EXTRACT(DAY FROM month) = 1),
    CONSTRAINT account_monthly_usage_relays_not_negative CHECK (relays >= 0)
);

-- The store's query filters on month alone.
CREATE INDEX IF NOT EXISTS account_monthly_usage_month_idx ON account_monthly_usage (month);
