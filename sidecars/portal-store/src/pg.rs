//! Postgres: PEAS's query and row mapping, the usage query, migrations.

use std::str::FromStr;
use std::sync::Arc;

use edgeguard_verdict::device::{parse_fingerprint, ClientAuth, Device};
use edgeguard_verdict::portal::{key_digest, AppAuth, PortalApp};
use edgeguard_verdict::quota::Month;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgRow};
use sqlx::{Connection, Row};

use crate::config::{describe, parse_url, StoreError};
use crate::snapshot::{AppMap, DeviceMap, Interner, UsageMap};

/// PEAS's `SelectPortalApps`, verbatim.
pub const SELECT_PORTAL_APPS: &str = "\
SELECT pa.id, pas.secret_key, pas.secret_key_required, pa.account_id, a.plan_type AS plan, a.monthly_user_limit
FROM portal_applications pa
LEFT JOIN portal_application_settings pas ON pa.id = pas.application_id
LEFT JOIN accounts a ON pa.account_id = a.id
WHERE pa.deleted = false
GROUP BY pa.id, pas.secret_key, pas.secret_key_required, a.plan_type, a.monthly_user_limit;";

/// The same query restricted to some apps and accounts (NOTIFY deltas): `$1` app ids,
/// `$2` account ids.
pub const SELECT_PORTAL_APPS_BY_IDS: &str = "\
SELECT pa.id, pas.secret_key, pas.secret_key_required, pa.account_id, a.plan_type AS plan, a.monthly_user_limit
FROM portal_applications pa
LEFT JOIN portal_application_settings pas ON pa.id = pas.application_id
LEFT JOIN accounts a ON pa.account_id = a.id
WHERE pa.deleted = false AND (pa.id = ANY($1::text[]) OR pa.account_id = ANY($2::text[]))
GROUP BY pa.id, pas.secret_key, pas.secret_key_required, a.plan_type, a.monthly_user_limit;";

/// A month's usage (`$1`: its first day, `YYYY-MM-01`, from the store's clock): the
/// operator's `relays` plus edgeguard's `metered_relays` (migrations 0002 and 0004).
pub const SELECT_USAGE: &str = "\
SELECT account_id, relays + metered_relays FROM account_monthly_usage
WHERE month = $1::date;";

/// [`SELECT_USAGE`] on a database without migration 0004: `relays` alone.
pub const SELECT_USAGE_WITHOUT_METERED: &str = "\
SELECT account_id, relays FROM account_monthly_usage
WHERE month = $1::date;";

/// The rows of a month (`$1`) written since a time (`$2`: microseconds since the Unix
/// epoch, database clock); migration 0004's index on `(month, updated_at)` serves it.
pub const SELECT_USAGE_CHANGED: &str = "\
SELECT account_id, relays + metered_relays FROM account_monthly_usage
WHERE month = $1::date AND updated_at >= timestamptz 'epoch' + $2::int8 * interval '1 microsecond';";

/// [`SELECT_USAGE_CHANGED`] without migration 0004.
pub const SELECT_USAGE_CHANGED_WITHOUT_METERED: &str = "\
SELECT account_id, relays FROM account_monthly_usage
WHERE month = $1::date AND updated_at >= timestamptz 'epoch' + $2::int8 * interval '1 microsecond';";

/// The valid device certificates (migration 0005, kept by `edgeguard enroll`): devices not
/// revoked, whose certificate no revocation or re-key listed (a `not_after` of `infinity`,
/// which no issued certificate has, is left out rather than failing the whole read).
pub const SELECT_DEVICES: &str = "\
SELECT d.id, d.account_id, d.fingerprint_sha256, extract(epoch FROM d.not_after)::int8
FROM edgeguard_devices d
WHERE d.revoked_at IS NULL
  AND isfinite(d.not_after)
  AND NOT EXISTS (SELECT 1 FROM edgeguard_revoked_certificates r
                  WHERE r.fingerprint_sha256 = d.fingerprint_sha256);";

/// Apps' client authentication (migration 0006): all of them.
pub const SELECT_CLIENT_AUTH: &str = "SELECT application_id, mode FROM edgeguard_app_client_auth;";

/// [`SELECT_CLIENT_AUTH`] for some apps (`$1`).
pub const SELECT_CLIENT_AUTH_BY_IDS: &str =
    "SELECT application_id, mode FROM edgeguard_app_client_auth WHERE application_id = ANY($1::text[]);";

/// The database clock, in microseconds since the Unix epoch.
pub const SELECT_DB_NOW: &str = "SELECT (extract(epoch FROM now()) * 1000000)::int8";

/// The NOTIFY channel of `migrations/0003_change_notify.sql`.
pub const CHANNEL: &str = "edgeguard_portal_changes";

/// The migrations, in order: (file name, SQL).
pub const MIGRATIONS: [(&str, &str); 6] = [
    (
        "0001_grove_schema.sql",
        include_str!("../migrations/0001_grove_schema.sql"),
    ),
    (
        "0002_account_monthly_usage.sql",
        include_str!("../migrations/0002_account_monthly_usage.sql"),
    ),
    (
        "0003_change_notify.sql",
        include_str!("../migrations/0003_change_notify.sql"),
    ),
    (
        "0004_metering.sql",
        include_str!("../migrations/0004_metering.sql"),
    ),
    (
        "0005_devices.sql",
        include_str!("../migrations/0005_devices.sql"),
    ),
    (
        "0006_client_auth.sql",
        include_str!("../migrations/0006_client_auth.sql"),
    ),
];

/// Runs the migrations (all idempotent) in one transaction, serialised across processes by
/// an advisory lock. `include_grove_schema` also creates PEAS's Grove tables (tests, demos;
/// real Portal databases have them). Nothing records which ran: running them again is
/// always safe.
pub async fn migrate(url: &str, include_grove_schema: bool) -> Result<(), StoreError> {
    let opts = parse_url(url)?;
    let mut conn =
        PgConnection::connect_with(&opts)
            .await
            .map_err(|source| StoreError::Connect {
                target: describe(&opts),
                source,
            })?;
    let result = migrate_with(&mut conn, include_grove_schema).await;
    let _ = conn.close().await;
    result
}

/// [`migrate`] on an existing connection.
pub async fn migrate_with(
    conn: &mut PgConnection,
    include_grove_schema: bool,
) -> Result<(), StoreError> {
    let step = |file: &'static str| move |source| StoreError::Migration { file, source };
    let mut tx = conn.begin().await.map_err(step("BEGIN"))?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('edgeguard_portal_store_migrate'))")
        .execute(&mut *tx)
        .await
        .map_err(step("advisory lock"))?;
    for (i, (file, sql)) in MIGRATIONS.iter().enumerate() {
        if i == 0 && !include_grove_schema {
            continue;
        }
        sqlx::raw_sql(*sql)
            .execute(&mut *tx)
            .await
            .map_err(step(file))?;
        tracing::info!(migration = file, "portal store migration applied");
    }
    tx.commit().await.map_err(step("COMMIT"))?;
    Ok(())
}

/// Oddities found while mapping rows, logged once per load.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RowStats {
    pub rows: usize,
    /// Apps whose `monthly_user_limit` was negative (mapped to 0).
    pub negative_limits: usize,
    pub negative_limit_example: Option<String>,
    /// Apps that require a key but have none (denied: fail closed).
    pub missing_keys: usize,
    pub missing_key_example: Option<String>,
    /// Columns that did not decode (wrong type); mapped fail-closed / to defaults.
    pub decode_errors: usize,
    /// Rows without a readable id (skipped).
    pub skipped: usize,
    /// Ids returned more than once (the last row wins, as in PEAS).
    pub duplicates: usize,
}

impl RowStats {
    pub(crate) fn log(&self, what: &str) {
        if self.negative_limits > 0 {
            tracing::warn!(
                count = self.negative_limits,
                example_app = self.negative_limit_example.as_deref().unwrap_or(""),
                "{what}: apps with a negative accounts.monthly_user_limit; treated as 0"
            );
        }
        if self.missing_keys > 0 {
            tracing::warn!(
                count = self.missing_keys,
                example_app = self.missing_key_example.as_deref().unwrap_or(""),
                "{what}: apps with secret_key_required but no secret_key; every request to them is denied (401), unlike PEAS which served them as public"
            );
        }
        if self.decode_errors > 0 || self.skipped > 0 {
            tracing::warn!(
                decode_errors = self.decode_errors,
                skipped_rows = self.skipped,
                "{what}: rows with values of unexpected types (unreadable keys deny, other columns default)"
            );
        }
        if self.duplicates > 0 {
            tracing::warn!(
                count = self.duplicates,
                "{what}: app ids returned more than once; the last row wins"
            );
        }
    }
}

/// One row of PEAS's query, as decoded (NULL = `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawRow {
    pub id: String,
    /// `Err(())`: the column did not decode.
    pub secret_key: Result<Option<String>, ()>,
    pub secret_key_required: Result<Option<bool>, ()>,
    pub account_id: Option<String>,
    pub plan: Option<String>,
    pub monthly_user_limit: Option<i64>,
}

/// PEAS's row mapping, with edgeguard's differences: NULLs become `""`/`false`/`0`; a
/// negative limit becomes 0; the key is kept as its SHA-256 digest; a required key that is
/// NULL or empty (or unreadable) makes the app deny everything (`MissingKey`).
pub(crate) fn map_row(row: RawRow, interner: &mut Interner, stats: &mut RowStats) -> PortalApp {
    let required = match row.secret_key_required {
        Ok(r) => r.unwrap_or(false),
        Err(()) => true, // unreadable: fail closed
    };
    let auth = if !required {
        AppAuth::Public
    } else {
        match &row.secret_key {
            Ok(Some(k)) if !k.is_empty() => AppAuth::ApiKey {
                digest: key_digest(k),
            },
            _ => {
                stats.missing_keys += 1;
                if stats.missing_key_example.is_none() {
                    stats.missing_key_example = Some(row.id.clone());
                }
                AppAuth::MissingKey
            }
        }
    };
    let limit = row.monthly_user_limit.unwrap_or(0);
    if limit < 0 {
        stats.negative_limits += 1;
        if stats.negative_limit_example.is_none() {
            stats.negative_limit_example = Some(row.id.clone());
        }
    }
    PortalApp {
        account_id: interner.get(row.account_id.as_deref().unwrap_or("")),
        plan: interner.get(row.plan.as_deref().unwrap_or("")),
        auth,
        monthly_user_limit: u64::try_from(limit).unwrap_or(0),
        client_auth: ClientAuth::Key,
    }
}

/// An integer column of any width (the Portal DB might not be exactly PEAS's schema).
fn get_int(row: &PgRow, idx: usize) -> Result<Option<i64>, ()> {
    if let Ok(v) = row.try_get::<Option<i32>, _>(idx) {
        return Ok(v.map(i64::from));
    }
    if let Ok(v) = row.try_get::<Option<i64>, _>(idx) {
        return Ok(v);
    }
    if let Ok(v) = row.try_get::<Option<i16>, _>(idx) {
        return Ok(v.map(i64::from));
    }
    if let Ok(v) = row.try_get::<Option<String>, _>(idx) {
        return v
            .map(|s| i64::from_str(s.trim()).map_err(|_| ()))
            .transpose();
    }
    Err(())
}

fn get_text(row: &PgRow, idx: usize, stats: &mut RowStats) -> Option<String> {
    match row.try_get::<Option<String>, _>(idx) {
        Ok(v) => v,
        Err(_) => {
            stats.decode_errors += 1;
            None
        }
    }
}

fn decode(row: &PgRow, stats: &mut RowStats) -> Option<RawRow> {
    let id = match row.try_get::<Option<String>, _>(0) {
        Ok(Some(id)) => id,
        _ => {
            stats.skipped += 1;
            return None;
        }
    };
    let secret_key = row.try_get::<Option<String>, _>(1).map_err(|_| ());
    let secret_key_required = row.try_get::<Option<bool>, _>(2).map_err(|_| ());
    stats.decode_errors +=
        usize::from(secret_key.is_err()) + usize::from(secret_key_required.is_err());
    let account_id = get_text(row, 3, stats);
    let plan = get_text(row, 4, stats);
    let monthly_user_limit = get_int(row, 5).unwrap_or_else(|()| {
        stats.decode_errors += 1;
        None
    });
    Some(RawRow {
        id,
        secret_key,
        secret_key_required,
        account_id,
        plan,
        monthly_user_limit,
    })
}

/// Runs PEAS's query (all apps, or only `ids` = (app ids, account ids)) and maps the rows.
pub(crate) async fn query_apps(
    conn: &mut PgConnection,
    ids: Option<(&[String], &[String])>,
) -> Result<(AppMap, RowStats), sqlx::Error> {
    let mut stats = RowStats::default();
    let mut interner = Interner::default();
    let mut apps = AppMap::default();
    let query = match ids {
        None => sqlx::query(SELECT_PORTAL_APPS),
        Some((app_ids, account_ids)) => sqlx::query(SELECT_PORTAL_APPS_BY_IDS)
            .bind(app_ids)
            .bind(account_ids),
    };
    let mut rows = query.fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        stats.rows += 1;
        let Some(raw) = decode(&row, &mut stats) else {
            continue;
        };
        let id: Arc<str> = Arc::from(raw.id.as_str());
        let app = map_row(raw, &mut interner, &mut stats);
        if apps.insert(id, app).is_some() {
            stats.duplicates += 1;
        }
    }
    apps.shrink_to_fit();
    Ok((apps, stats))
}

/// Whether `e` is Postgres's "undefined table" (SQLSTATE 42P01): a migration of edgeguard's
/// own tables (0005, 0006) was not applied.
pub(crate) fn is_undefined_table(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42P01"))
}

/// Rows of edgeguard's own tables that could not be used.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OwnRows {
    /// Device rows with an unreadable column or a fingerprint that is not 64 hex digits
    /// (skipped: such a device is refused).
    pub bad_devices: usize,
    /// Client-auth rows with an unknown mode (the app then accepts certificates only, the
    /// narrower reading; logged).
    pub bad_modes: usize,
    /// The table did not exist (migration not applied).
    pub missing_table: bool,
}

/// Reads the valid device certificates. A database without migration 0005 has none.
pub(crate) async fn query_devices(
    conn: &mut PgConnection,
) -> Result<(DeviceMap, OwnRows), sqlx::Error> {
    let mut devices = DeviceMap::default();
    let mut stats = OwnRows::default();
    let mut interner = Interner::default();
    let mut rows = sqlx::query(SELECT_DEVICES).fetch(&mut *conn);
    loop {
        let row = match rows.try_next().await {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) if is_undefined_table(&e) => {
                stats.missing_table = true;
                break;
            }
            Err(e) => return Err(e),
        };
        let id = row.try_get::<String, _>(0);
        let account = row.try_get::<String, _>(1);
        let fingerprint = row.try_get::<String, _>(2);
        let not_after = row.try_get::<i64, _>(3);
        match (
            id,
            account,
            fingerprint.map(|f| parse_fingerprint(&f)),
            not_after,
        ) {
            (Ok(id), Ok(account), Ok(Some(fingerprint)), Ok(not_after)) => {
                devices.insert(
                    fingerprint,
                    Device {
                        id: Arc::from(id),
                        account_id: interner.get(&account),
                        not_after,
                    },
                );
            }
            _ => stats.bad_devices += 1,
        }
    }
    Ok((devices, stats))
}

/// Sets the client authentication of `apps` from migration 0006's table (all apps, or those
/// of `ids`). Apps without a row keep `key`. A database without the table has none.
pub(crate) async fn apply_client_auth(
    conn: &mut PgConnection,
    apps: &mut AppMap,
    ids: Option<&[String]>,
) -> Result<OwnRows, sqlx::Error> {
    let mut stats = OwnRows::default();
    let query = match ids {
        None => sqlx::query(SELECT_CLIENT_AUTH),
        Some(ids) => sqlx::query(SELECT_CLIENT_AUTH_BY_IDS).bind(ids),
    };
    let mut rows = query.fetch(&mut *conn);
    loop {
        let row = match rows.try_next().await {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) if is_undefined_table(&e) => {
                stats.missing_table = true;
                break;
            }
            Err(e) => return Err(e),
        };
        let Ok(id) = row.try_get::<String, _>(0) else {
            stats.bad_modes += 1;
            continue;
        };
        let mode = row.try_get::<String, _>(1).ok();
        let Some(app) = apps.get_mut(id.as_str()) else {
            continue;
        };
        app.client_auth = match mode.as_deref().and_then(ClientAuth::parse) {
            Some(m) => m,
            None => {
                stats.bad_modes += 1;
                ClientAuth::Certificate
            }
        };
    }
    Ok(stats)
}

/// Whether `e` is Postgres's "undefined column" (SQLSTATE 42703): here, migration 0004's
/// `metered_relays` is missing.
pub(crate) fn is_undefined_column(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42703"))
}

/// The database clock (microseconds since the Unix epoch).
pub(crate) async fn db_now(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    let row = sqlx::query(SELECT_DB_NOW).fetch_one(&mut *conn).await?;
    row.try_get::<i64, _>(0)
}

/// Usage rows as `(account, total)`; negative totals become 0, unreadable rows are skipped.
async fn usage_rows(
    conn: &mut PgConnection,
    query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<Vec<(Arc<str>, u64)>, sqlx::Error> {
    let mut out = Vec::new();
    let mut bad = 0usize;
    let mut rows = query.fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        let account = row.try_get::<Option<String>, _>(0);
        let relays = get_int(&row, 1);
        match (account, relays) {
            (Ok(Some(a)), Ok(r)) => {
                out.push((
                    Arc::from(a.as_str()),
                    u64::try_from(r.unwrap_or(0)).unwrap_or(0),
                ));
            }
            _ => bad += 1,
        }
    }
    if bad > 0 {
        tracing::warn!(
            rows = bad,
            "account_monthly_usage: rows with unreadable values skipped"
        );
    }
    Ok(out)
}

/// `month`'s usage: `relays + metered_relays`, or `relays` alone when `metered` is false
/// (no migration 0004).
pub(crate) async fn query_usage(
    conn: &mut PgConnection,
    month: Month,
    metered: bool,
) -> Result<UsageMap, sqlx::Error> {
    let sql = if metered {
        SELECT_USAGE
    } else {
        SELECT_USAGE_WITHOUT_METERED
    };
    let rows = usage_rows(conn, sqlx::query(sql).bind(month.first_day())).await?;
    let mut usage = UsageMap::default();
    usage.reserve(rows.len());
    for (a, r) in rows {
        let e = usage.entry(a).or_insert(0);
        *e = e.saturating_add(r);
    }
    Ok(usage)
}

/// The totals of `month`'s rows written at or after `since_micros` (database clock).
pub(crate) async fn query_usage_changed(
    conn: &mut PgConnection,
    month: Month,
    since_micros: i64,
    metered: bool,
) -> Result<Vec<(Arc<str>, u64)>, sqlx::Error> {
    let sql = if metered {
        SELECT_USAGE_CHANGED
    } else {
        SELECT_USAGE_CHANGED_WITHOUT_METERED
    };
    let query = sqlx::query(sql).bind(month.first_day()).bind(since_micros);
    usage_rows(conn, query).await
}

/// Connects with a timeout.
pub(crate) async fn connect(
    opts: &PgConnectOptions,
    timeout: std::time::Duration,
) -> Result<PgConnection, sqlx::Error> {
    match tokio::time::timeout(timeout, PgConnection::connect_with(opts)).await {
        Ok(r) => r,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connection attempt timed out after {timeout:?}"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(id: &str) -> RawRow {
        RawRow {
            id: id.into(),
            secret_key: Ok(None),
            secret_key_required: Ok(None),
            account_id: None,
            plan: None,
            monthly_user_limit: None,
        }
    }

    #[test]
    fn peas_row_mapping() {
        let mut i = Interner::default();
        let mut s = RowStats::default();
        // all NULL
        let a = map_row(raw("a"), &mut i, &mut s);
        assert_eq!(
            (&*a.account_id, &*a.plan, &a.auth, a.monthly_user_limit),
            ("", "", &AppAuth::Public, 0)
        );
        // key present but not required: public (PEAS)
        let a = map_row(
            RawRow {
                secret_key: Ok(Some("k".into())),
                secret_key_required: Ok(Some(false)),
                ..raw("b")
            },
            &mut i,
            &mut s,
        );
        assert_eq!(a.auth, AppAuth::Public);
        let a = map_row(
            RawRow {
                secret_key: Ok(Some("k".into())),
                secret_key_required: Ok(Some(true)),
                account_id: Some("acc".into()),
                plan: Some("PLAN_FREE".into()),
                monthly_user_limit: Some(-5),
                ..raw("c")
            },
            &mut i,
            &mut s,
        );
        assert_eq!(
            a.auth,
            AppAuth::ApiKey {
                digest: key_digest("k")
            }
        );
        assert_eq!(a.monthly_user_limit, 0);
        assert_eq!(
            (s.negative_limits, s.negative_limit_example.as_deref()),
            (1, Some("c"))
        );
        // required, NULL or empty key, or an unreadable column: fail closed
        for r in [
            RawRow {
                secret_key_required: Ok(Some(true)),
                ..raw("d")
            },
            RawRow {
                secret_key: Ok(Some(String::new())),
                secret_key_required: Ok(Some(true)),
                ..raw("e")
            },
            RawRow {
                secret_key: Err(()),
                secret_key_required: Ok(Some(true)),
                ..raw("f")
            },
            RawRow {
                secret_key: Ok(Some("k".into())),
                secret_key_required: Err(()),
                ..raw("g")
            },
        ] {
            let id = r.id.clone();
            let a = map_row(r, &mut i, &mut s);
            if id == "g" {
                // unreadable `required` but a readable key: the key is required
                assert!(matches!(a.auth, AppAuth::ApiKey { .. }), "{id}");
            } else {
                assert_eq!(a.auth, AppAuth::MissingKey, "{id}");
            }
        }
        assert_eq!(s.missing_keys, 3);
    }
}
