-- edgeguard portal store, migration 0005: device identity (`edgeguard enroll`).
--
-- Devices enroll with a one-time enrollment token and get a client certificate signed by the
-- fleet CA; these tables are the registry `edgeguard enroll` keeps (see the README section
-- "edgeguard enroll (device identity)"):
--
--   edgeguard_devices               one row per device: its current certificate (SHA-256
--       fingerprint of the DER, hex; serial, hex; validity), its SPIFFE id
--       `spiffe://<trust domain>/device/<id>`, its account, and `revoked_at` once revoked.
--       A re-key replaces the certificate columns in place (same id, same SPIFFE id).
--   edgeguard_enrollment_tokens     enrollment tokens, by the SHA-256 of the token (hex; the
--       token itself is shown once and never stored), bound to an account, with an expiry and
--       a use count; `device_id` is set for a re-key token (the device it re-keys).
--   edgeguard_revoked_certificates  fingerprints that must stay refused: the certificate of a
--       revoked device, and every certificate a re-key replaced.
--
-- A change to edgeguard_devices sends, like migration 0003, one notification on channel
-- `edgeguard_portal_changes` whose payload is a JSON object:
--
--   {"table": "edgeguard_devices", "op": "UPDATE", "device_id": "<id>", "account_id": "<account>"}
--   {"table": "edgeguard_devices", "op": "TRUNCATE"}
--
-- UPDATE notifies only for the columns a verdict reads (not `last_seen_at`, which heartbeats
-- will write often, nor `label`, `serial`, `created_at`). (An UPDATE that moves a device to another id or account sends one for the old and one for the
-- new). Delivered at commit. The portal store reads every valid device again on each of these
-- payloads (the registry is small) and publishes the difference, so a revocation reaches every
-- Envoy through the snapshot feed.  Idempotent: tables and indexes are created if missing, the function
-- replaced and the triggers dropped and re-created.

CREATE TABLE IF NOT EXISTS edgeguard_devices (
    id                 TEXT        PRIMARY KEY,
    account_id         TEXT        NOT NULL,
    fingerprint_sha256 TEXT        NOT NULL UNIQUE,
    spiffe_id          TEXT        NOT NULL,
    serial             TEXT        NOT NULL,
    label              TEXT        NOT NULL DEFAULT '',
    not_before         TIMESTAMPTZ NOT NULL,
    not_after          TIMESTAMPTZ NOT NULL,
    revoked_at         TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at       TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS edgeguard_devices_account_idx ON edgeguard_devices (account_id);

CREATE TABLE IF NOT EXISTS edgeguard_enrollment_tokens (
    id         TEXT        PRIMARY KEY,
    digest     TEXT        NOT NULL UNIQUE,
    account_id TEXT        NOT NULL,
    device_id  TEXT,
    expires_at TIMESTAMPTZ NOT NULL,
    uses_left  INTEGER     NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT edgeguard_enrollment_tokens_uses_not_negative CHECK (uses_left >= 0)
);
CREATE INDEX IF NOT EXISTS edgeguard_enrollment_tokens_device_idx
    ON edgeguard_enrollment_tokens (device_id) WHERE device_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS edgeguard_revoked_certificates (
    fingerprint_sha256 TEXT        PRIMARY KEY,
    device_id          TEXT        NOT NULL,
    revoked_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS edgeguard_revoked_certificates_device_idx
    ON edgeguard_revoked_certificates (device_id);

CREATE OR REPLACE FUNCTION edgeguard_devices_notify() RETURNS trigger
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
            'device_id', OLD.id, 'account_id', OLD.account_id)::text);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE'
            AND (NEW.id, NEW.account_id) IS DISTINCT FROM (OLD.id, OLD.account_id)) THEN
        PERFORM pg_notify(channel, json_build_object('table', TG_TABLE_NAME, 'op', TG_OP,
            'device_id', NEW.id, 'account_id', NEW.account_id)::text);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS edgeguard_devices_changes ON edgeguard_devices;
CREATE TRIGGER edgeguard_devices_changes
    AFTER INSERT OR DELETE
       OR UPDATE OF id, account_id, fingerprint_sha256, spiffe_id, not_before, not_after, revoked_at
    ON edgeguard_devices
    FOR EACH ROW EXECUTE FUNCTION edgeguard_devices_notify();
DROP TRIGGER IF EXISTS edgeguard_devices_truncate ON edgeguard_devices;
CREATE TRIGGER edgeguard_devices_truncate
    AFTER TRUNCATE ON edgeguard_devices
    FOR EACH STATEMENT EXECUTE FUNCTION edgeguard_devices_notify();
