//! The registry in Postgres (migration 0005: `edgeguard_devices`,
//! `edgeguard_enrollment_tokens`, `edgeguard_revoked_certificates`).
//!
//! Times cross the wire as Unix seconds (`to_timestamp`, `extract(epoch ...)`), so no date
//! type is needed on this side. An enrollment is one transaction: the token row is locked
//! (`SELECT ... FOR UPDATE`, so concurrent enrollments with one token queue on it), checked,
//! the certificate signed, the device inserted (or, for a re-key, its row updated and the
//! old fingerprint moved to `edgeguard_revoked_certificates`), the use consumed, COMMIT; the
//! caller answers the certificate only after the commit.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::Row;

use crate::ca::Issued;
use crate::registry::{
    Device, DeviceCounts, DeviceError, EnrollError, Enrolled, Grant, RevokedCertificate,
    StoreError, TokenRecord,
};

/// The columns [`device_of`] reads (a macro, so that queries stay literal strings).
macro_rules! device_columns {
    () => {
        "id, account_id, spiffe_id, fingerprint_sha256, serial, label, \
         extract(epoch FROM not_before)::int8, extract(epoch FROM not_after)::int8, \
         extract(epoch FROM revoked_at)::int8, extract(epoch FROM created_at)::int8, \
         extract(epoch FROM last_seen_at)::int8"
    };
}

pub struct PgRegistry {
    pool: PgPool,
    target: String,
}

fn device_of(row: &PgRow) -> Result<Device, sqlx::Error> {
    Ok(Device {
        id: row.try_get(0)?,
        account_id: row.try_get(1)?,
        spiffe_id: row.try_get(2)?,
        fingerprint_sha256: row.try_get(3)?,
        serial: row.try_get(4)?,
        label: row.try_get(5)?,
        not_before: row.try_get(6)?,
        not_after: row.try_get(7)?,
        revoked_at: row.try_get(8)?,
        created_at: row.try_get(9)?,
        last_seen_at: row.try_get(10)?,
    })
}

impl PgRegistry {
    /// A pool on `url` (connections are made lazily; `ready` tells whether Postgres answers).
    pub fn connect(url: &str) -> Result<PgRegistry, String> {
        let opts = PgConnectOptions::from_str(url).map_err(|_| {
            format!(
                "POSTGRES_CONNECTION_STRING is not a valid Postgres URL ({}): expected postgres://user:password@host:5432/database",
                edgeguard_portal_store::redact_url(url)
            )
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(opts);
        Ok(PgRegistry {
            pool,
            target: edgeguard_portal_store::redact_url(url),
        })
    }

    pub fn describe(&self) -> String {
        format!("postgres {}", self.target)
    }

    pub async fn ready(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1 FROM edgeguard_devices LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO edgeguard_enrollment_tokens \
             (id, digest, account_id, device_id, expires_at, uses_left, created_at) \
             VALUES ($1, $2, $3, $4, to_timestamp($5), $6, to_timestamp($7))",
        )
        .bind(&t.id)
        .bind(&t.digest)
        .bind(&t.account_id)
        .bind(&t.device_id)
        .bind(t.expires_at as f64)
        .bind(i32::try_from(t.uses_left).unwrap_or(i32::MAX))
        .bind(t.created_at as f64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn create_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        self.insert_token(t).await
    }

    pub async fn create_rekey_token(&self, t: &TokenRecord) -> Result<(), DeviceError> {
        let id = t.device_id.clone().unwrap_or_default();
        let revoked: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT extract(epoch FROM revoked_at)::int8 FROM edgeguard_devices WHERE id = $1",
        )
        .bind(&id)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from)?;
        match revoked {
            None => Err(DeviceError::NotFound(id)),
            Some(Some(_)) => Err(DeviceError::Revoked(id)),
            Some(None) => Ok(self.insert_token(t).await?),
        }
    }

    pub async fn enroll<F>(&self, digest: &str, now: i64, sign: F) -> Result<Enrolled, EnrollError>
    where
        F: FnOnce(&Grant) -> Result<(Issued, String), EnrollError> + Send,
    {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let row = sqlx::query(
            "SELECT id, account_id, device_id, extract(epoch FROM expires_at)::int8, uses_left \
             FROM edgeguard_enrollment_tokens WHERE digest = $1 FOR UPDATE",
        )
        .bind(digest)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let Some(row) = row else {
            return Err(EnrollError::UnknownToken);
        };
        let token_id: String = row.try_get(0).map_err(StoreError::from)?;
        let account_id: String = row.try_get(1).map_err(StoreError::from)?;
        let rekey: Option<String> = row.try_get(2).map_err(StoreError::from)?;
        let expires_at: i64 = row.try_get(3).map_err(StoreError::from)?;
        let uses_left: i32 = row.try_get(4).map_err(StoreError::from)?;
        if expires_at <= now {
            return Err(EnrollError::TokenExpired);
        }
        if uses_left <= 0 {
            return Err(EnrollError::TokenUsedUp);
        }
        let (device_id, replaces) = match rekey {
            Some(id) => {
                let current = sqlx::query(
                    "SELECT fingerprint_sha256, revoked_at IS NOT NULL \
                     FROM edgeguard_devices WHERE id = $1 FOR UPDATE",
                )
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::from)?;
                match current {
                    Some(r) if !r.try_get::<bool, _>(1).map_err(StoreError::from)? => {
                        let fp: String = r.try_get(0).map_err(StoreError::from)?;
                        (id, Some(fp))
                    }
                    _ => return Err(EnrollError::DeviceRevoked(id)),
                }
            }
            None => (crate::new_device_id(), None),
        };
        let grant = Grant {
            token_id,
            account_id,
            device_id,
            replaces,
        };
        // the CSR is checked and signed while the token row is locked: a refused CSR rolls
        // back (the use is not consumed)
        let (issued, label) = sign(&grant)?;
        match &grant.replaces {
            Some(old) => {
                sqlx::query(
                    "INSERT INTO edgeguard_revoked_certificates (fingerprint_sha256, device_id, revoked_at) \
                     VALUES ($1, $2, to_timestamp($3)) ON CONFLICT (fingerprint_sha256) DO NOTHING",
                )
                .bind(old)
                .bind(&grant.device_id)
                .bind(now as f64)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
                sqlx::query(
                    "UPDATE edgeguard_devices SET fingerprint_sha256 = $2, serial = $3, label = $4, \
                     not_before = to_timestamp($5), not_after = to_timestamp($6) WHERE id = $1",
                )
                .bind(&grant.device_id)
                .bind(&issued.fingerprint_sha256)
                .bind(&issued.serial)
                .bind(&label)
                .bind(issued.not_before as f64)
                .bind(issued.not_after as f64)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO edgeguard_devices (id, account_id, fingerprint_sha256, spiffe_id, serial, \
                     label, not_before, not_after, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7), to_timestamp($8), to_timestamp($9))",
                )
                .bind(&grant.device_id)
                .bind(&grant.account_id)
                .bind(&issued.fingerprint_sha256)
                .bind(&issued.spiffe_id)
                .bind(&issued.serial)
                .bind(&label)
                .bind(issued.not_before as f64)
                .bind(issued.not_after as f64)
                .bind(now as f64)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            }
        }
        sqlx::query(
            "UPDATE edgeguard_enrollment_tokens SET uses_left = uses_left - 1 WHERE id = $1",
        )
        .bind(&grant.token_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Enrolled {
            issued,
            grant,
            label,
        })
    }

    pub async fn devices(&self, account_id: Option<&str>) -> Result<Vec<Device>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            device_columns!(),
            " FROM edgeguard_devices WHERE ($1::text IS NULL OR account_id = $1) ORDER BY created_at, id"
        ))
            .bind(account_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(device_of).collect::<Result<_, _>>()?)
    }

    pub async fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            device_columns!(),
            " FROM edgeguard_devices WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(device_of).transpose()?)
    }

    /// Voids every unused enrollment or re-key token of an account; returns how many.
    pub async fn void_account_tokens(&self, account_id: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE edgeguard_enrollment_tokens SET uses_left = 0 WHERE account_id = $1 AND uses_left > 0",
        )
        .bind(account_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn revoke(&self, id: &str, now: i64) -> Result<Device, DeviceError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let row = sqlx::query(concat!(
            "SELECT ",
            device_columns!(),
            " FROM edgeguard_devices WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let Some(row) = row else {
            return Err(DeviceError::NotFound(id.to_string()));
        };
        let mut device = device_of(&row).map_err(StoreError::from)?;
        if device.revoked_at.is_none() {
            sqlx::query("UPDATE edgeguard_devices SET revoked_at = to_timestamp($2) WHERE id = $1")
                .bind(id)
                .bind(now as f64)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            device.revoked_at = Some(now);
        }
        sqlx::query(
            "INSERT INTO edgeguard_revoked_certificates (fingerprint_sha256, device_id, revoked_at) \
             VALUES ($1, $2, to_timestamp($3)) ON CONFLICT (fingerprint_sha256) DO NOTHING",
        )
        .bind(&device.fingerprint_sha256)
        .bind(id)
        .bind(now as f64)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        sqlx::query(
            "UPDATE edgeguard_enrollment_tokens SET uses_left = 0 WHERE device_id = $1 AND uses_left > 0",
        )
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(device)
    }

    pub async fn revoked_certificates(
        &self,
        device_id: Option<&str>,
    ) -> Result<Vec<RevokedCertificate>, StoreError> {
        let rows = sqlx::query(
            "SELECT fingerprint_sha256, device_id, extract(epoch FROM revoked_at)::int8 \
             FROM edgeguard_revoked_certificates WHERE ($1::text IS NULL OR device_id = $1) \
             ORDER BY revoked_at, fingerprint_sha256",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RevokedCertificate {
                    fingerprint_sha256: r.try_get(0)?,
                    device_id: r.try_get(1)?,
                    revoked_at: r.try_get(2)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn counts(&self, now: i64, seen_since: i64) -> Result<DeviceCounts, StoreError> {
        let row = sqlx::query(
            "SELECT count(*) FILTER (WHERE revoked_at IS NULL AND not_after > to_timestamp($1)), \
                    count(*) FILTER (WHERE revoked_at IS NULL AND not_after <= to_timestamp($1)), \
                    count(*) FILTER (WHERE revoked_at IS NOT NULL), \
                    count(*) FILTER (WHERE revoked_at IS NULL AND not_after > to_timestamp($1) \
                                     AND last_seen_at >= to_timestamp($2)) \
             FROM edgeguard_devices",
        )
        .bind(now as f64)
        .bind(seen_since as f64)
        .fetch_one(&self.pool)
        .await?;
        Ok(DeviceCounts {
            active: row.try_get(0)?,
            expired: row.try_get(1)?,
            revoked: row.try_get(2)?,
            seen: row.try_get(3)?,
        })
    }
}
