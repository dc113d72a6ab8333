-- Demo portal apps for the compose stack (runs after the store's migrations 0001-0006).
--   app_free       PLAN_FREE account, API key required   -> Rl-Plan-Free: acc_free
--   app_unlimited  PLAN_UNLIMITED, 40M relays/month      -> Rl-User-Limit-40: acc_unl
--   app_public     no key required, no limit
--   app_over       PLAN_FREE account over its 1,000,000 free relays this month -> 429
--   app_device     devices of acc_free only (client certificates edgeguard-enroll issued, on
--                  Envoy's mutual-TLS listener :10443); a key does not open it (migration 0006)
-- Try: curl -H 'Authorization: Bearer demo-key-free' localhost:10000/v1/app_free
INSERT INTO accounts (id, plan_type, monthly_user_limit) VALUES
    ('acc_free', 'PLAN_FREE', 0),
    ('acc_unl', 'PLAN_UNLIMITED', 40000000),
    ('acc_open', 'PLAN_UNLIMITED', 0),
    ('acc_over', 'PLAN_FREE', 0)
ON CONFLICT (id) DO NOTHING;

INSERT INTO portal_applications (id, account_id) VALUES
    ('app_free', 'acc_free'),
    ('app_unlimited', 'acc_unl'),
    ('app_public', 'acc_open'),
    ('app_over', 'acc_over'),
    ('app_device', 'acc_free')
ON CONFLICT (id) DO NOTHING;

INSERT INTO portal_application_settings (application_id, secret_key, secret_key_required) VALUES
    ('app_free', 'demo-key-free', true),
    ('app_unlimited', 'demo-key-unlimited', true),
    ('app_public', NULL, false),
    ('app_over', 'demo-key-over', true),
    ('app_device', NULL, true)
ON CONFLICT (application_id) DO NOTHING;

INSERT INTO edgeguard_app_client_auth (application_id, mode) VALUES
    ('app_device', 'certificate')
ON CONFLICT (application_id) DO NOTHING;

-- This month's usage (what a metering job would upsert): only acc_over is over its limit.
INSERT INTO account_monthly_usage (account_id, month, relays) VALUES
    ('acc_free', date_trunc('month', now() AT TIME ZONE 'UTC')::date, 250000),
    ('acc_unl', date_trunc('month', now() AT TIME ZONE 'UTC')::date, 1500000),
    ('acc_over', date_trunc('month', now() AT TIME ZONE 'UTC')::date, 1200000)
ON CONFLICT (account_id, month) DO NOTHING;
