-- edgeguard portal store, migration 0003: change notifications.
--
-- Row triggers on the three Grove tables send, after each change that can alter what
-- `SelectPortalApps` returns, one notification on channel `edgeguard_portal_changes` whose
-- payload is a JSON object:
--
--   {"table": "portal_applications",         "op": "UPDATE", "app_id": "<id>"}
--   {"table": "portal_application_settings", "op": "INSERT", "app_id": "<application_id>"}
--   {"table": "accounts",                    "op": "UPDATE", "account_id": "<id>"}
--   {"table": "<any of them>",               "op": "TRUNCATE"}
--
-- (an UPDATE that changes a key sends one notification for the old and one for the new id).
-- Notifications are delivered at commit, and Postgres folds identical payloads of one
-- transaction into one. The store re-queries just the named apps (and every app of a named
-- account) with PEAS's query; an id that no longer comes back is a deletion. A payload
-- without ids (TRUNCATE, or anything it cannot parse) makes it reload everything. Other
-- producers may send the same payloads with `SELECT pg_notify('edgeguard_portal_changes', ..)`.
--
-- UPDATE triggers fire only for the columns the query reads, so busy Portal tables with
-- many other columns do not flood the channel. Idempotent: functions are replaced and
-- triggers dropped and re-created.

CREATE OR REPLACE FUNCTION edgeguard_portal_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    channel CONSTANT text := 'edgeguard_portal_changes';
    key_column text;
    id_field text;
    old_id text;
    new_id text;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify(channel, json_build_object('table', TG_TABLE_NAME, 'op', TG_OP)::text);
        RETURN NULL;
    END IF;

    IF TG_TABLE_NAME = 'portal_applications' THEN
        key_column := 'id';
        id_field := 'app_id';
    ELSIF TG_TABLE_NAME = 'portal_application_settings' THEN
        key_column := 'application_id';
        id_field := 'app_id';
    ELSIF TG_TABLE_NAME = 'accounts' THEN
        key_column := 'id';
        id_field := 'account_id';
    ELSE
        RETURN NULL;
    END IF;

    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_id := to_jsonb(OLD) ->> key_column;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_id := to_jsonb(NEW) ->> key_column;
    END IF;

    IF old_id IS NOT NULL THEN
        PERFORM pg_notify(channel,
            json_build_object('table', TG_TABLE_NAME, 'op', TG_OP, id_field, old_id)::text);
    END IF;
    IF new_id IS NOT NULL AND new_id IS DISTINCT FROM old_id THEN
        PERFORM pg_notify(channel,
            json_build_object('table', TG_TABLE_NAME, 'op', TG_OP, id_field, new_id)::text);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS edgeguard_portal_changes ON portal_applications;
CREATE TRIGGER edgeguard_portal_changes
    AFTER INSERT OR DELETE OR UPDATE OF id, account_id, deleted ON portal_applications
    FOR EACH ROW EXECUTE FUNCTION edgeguard_portal_notify();
DROP TRIGGER IF EXISTS edgeguard_portal_truncate ON portal_applications;
CREATE TRIGGER edgeguard_portal_truncate
    AFTER TRUNCATE ON portal_applications
    FOR EACH STATEMENT EXECUTE FUNCTION edgeguard_portal_notify();

DROP TRIGGER IF EXISTS edgeguard_portal_changes ON portal_application_settings;
CREATE TRIGGER edgeguard_portal_changes
    AFTER INSERT OR DELETE OR UPDATE OF application_id, secret_key, secret_key_required
    ON portal_application_settings
    FOR EACH ROW EXECUTE FUNCTION edgeguard_portal_notify();
DROP TRIGGER IF EXISTS edgeguard_portal_truncate ON portal_application_settings;
CREATE TRIGGER edgeguard_portal_truncate
    AFTER TRUNCATE ON portal_application_settings
    FOR EACH STATEMENT EXECUTE FUNCTION edgeguard_portal_notify();

DROP TRIGGER IF EXISTS edgeguard_portal_changes ON accounts;
CREATE TRIGGER edgeguard_portal_changes
    AFTER INSERT OR DELETE OR UPDATE OF id, plan_type, monthly_user_limit ON accounts
    FOR EACH ROW EXECUTE FUNCTION edgeguard_portal_notify();
DROP TRIGGER IF EXISTS edgeguard_portal_truncate ON accounts;
CREATE TRIGGER edgeguard_portal_truncate
    AFTER TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION edgeguard_portal_notify();
