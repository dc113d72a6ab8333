-- edgeguard portal store, migration 0006: how an app authenticates its callers.
--
-- PEAS knew one way: the app's secret key (or none, for a public app). edgeguard adds device
-- certificates (`edgeguard enroll`, migration 0005). One row per app that is not `key`:
--
--   mode = 'key'          the app's key, as PEAS (the default: apps without a row)
--   mode = 'certificate'  a client certificate of a device of the app's account; a key does not do
--   mode = 'either'       a device certificate or the key
--
-- A change sends, like migration 0003, one notification on channel `edgeguard_portal_changes`:
--
--   {"table": "edgeguard_app_client_auth", "op": "UPDATE", "app_id": "<application_id>"}
--   {"table": "edgeguard_app_client_auth", "op": "TRUNCATE"}
--
-- and the store re-reads that app. Idempotent: the table is created if missing, the function
-- replaced and the triggers dropped and re-created.
--
-- Also here: a statement-level notification for migration 0005's
-- `edgeguard_revoked_certificates` ({"table": "edgeguard_revoked_certificates", "op": ...}), so a
-- fingerprint revoked there directly (not through `edgeguard enroll`, which also updates the
-- device row) reaches every Envoy as fast as a device change: the store reads the devices again.

CREATE TABLE IF NOT EXISTS edgeguard_app_client_auth (
    application_id TEXT        PRIMARY KEY,
    mode           TEXT        NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT edgeguard_app_client_auth_mode CHECK (mode IN ('key', 'certificate', 'either'))
);

CREATE OR REPLACE FUNCTION edgeguard_app_client_auth_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    channel CONSTANT text := 'edgeguard_portal_changes';
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify(channel, json_build_object('table', TG_TABLE_NAME, 'op', TG_OP)::text);
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify(channel, json_build_object('table', TG_TABLE_NAME, 'op', TG_OP,
            'app_id', OLD.application_id)::text);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.application_id IS DISTINCT FROM OLD.application_id) THEN
        PERFORM pg_notify(channel, json_build_object('table', TG_TABLE_NAME, 'op', TG_OP,
            'app_id', NEW.application_id)::text);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS edgeguard_app_client_auth_changes ON edgeguard_app_client_auth;
CREATE TRIGGER edgeguard_app_client_auth_changes
    AFTER INSERT OR DELETE OR UPDATE OF application_id, mode ON edgeguard_app_client_auth
    FOR EACH ROW EXECUTE FUNCTION edgeguard_app_client_auth_notify();
DROP TRIGGER IF EXISTS edgeguard_app_client_auth_truncate ON edgeguard_app_client_auth;
CREATE TRIGGER edgeguard_app_client_auth_truncate
    AFTER TRUNCATE ON edgeguard_app_client_auth
    FOR EACH STATEMENT EXECUTE FUNCTION edgeguard_app_client_auth_notify();

CREATE OR REPLACE FUNCTION edgeguard_revoked_certificates_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('edgeguard_portal_changes',
        json_build_object('table', TG_TABLE_NAME, 'op', TG_OP)::text);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS edgeguard_revoked_certificates_changes ON edgeguard_revoked_certificates;
CREATE TRIGGER edgeguard_revoked_certificates_changes
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON edgeguard_revoked_certificates
    FOR EACH STATEMENT EXECUTE FUNCTION edgeguard_revoked_certificates_notify();
