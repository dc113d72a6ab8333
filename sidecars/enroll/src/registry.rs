//! The device registry: devices, enrollment tokens (by digest) and revoked certificates, in
//! Postgres ([`crate::registry_pg`], migration 0005) or a YAML file ([`crate::registry_file`]).
//!
//! Both keep one rule: an enrollment consumes a token use and records the device (or its new
//! certificate) in ONE step that is durable before the certificate is answered: a Postgres
//! transaction that locks the token row (`SELECT ... FOR UPDATE`) and commits, or the file
//! rewritten atomically (temporary file, fsync, rename, fsync of the folder). A token is
//! never used more often than it allows, and a device that got a certificate always has its
//! record, whatever happens to the process.

use serde::{Deserialize, Serialize};

use crate::ca::{IssueError, Issued};
use crate::csr::CsrRefusal;
use crate::registry_file::FileRegistry;
use crate::registry_pg::PgRegistry;

/// A device as the admin API shows it (times are Unix seconds here, RFC 3339 in JSON and YAML).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    pub account_id: String,
    pub spiffe_id: String,
    pub fingerprint_sha256: String,
    pub serial: String,
    #[serde(default)]
    pub label: String,
    #[serde(with = "crate::rfc3339")]
    pub not_before: i64,
    #[serde(with = "crate::rfc3339")]
    pub not_after: i64,
    #[serde(with = "crate::rfc3339::option", default)]
    pub revoked_at: Option<i64>,
    #[serde(with = "crate::rfc3339")]
    pub created_at: i64,
    #[serde(with = "crate::rfc3339::option", default)]
    pub last_seen_at: Option<i64>,
}

/// A device's state at some time (the `state` label of the devices gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    Active,
    Expired,
    Revoked,
}

impl DeviceState {
    pub const ALL: [DeviceState; 3] = [
        DeviceState::Active,
        DeviceState::Expired,
        DeviceState::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Active => "active",
            DeviceState::Expired => "expired",
            DeviceState::Revoked => "revoked",
        }
    }
}

impl Device {
    pub fn state(&self, now: i64) -> DeviceState {
        if self.revoked_at.is_some() {
            DeviceState::Revoked
        } else if self.not_after <= now {
            DeviceState::Expired
        } else {
            DeviceState::Active
        }
    }
}

/// An enrollment token as stored: its SHA-256 (hex), never the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub digest: String,
    pub account_id: String,
    /// Set for a re-key token: the device it re-keys.
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(with = "crate::rfc3339")]
    pub expires_at: i64,
    pub uses_left: i64,
    #[serde(with = "crate::rfc3339")]
    pub created_at: i64,
}

/// A certificate that stays refused (revoked device, or replaced by a re-key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCertificate {
    pub fingerprint_sha256: String,
    pub device_id: String,
    #[serde(with = "crate::rfc3339")]
    pub revoked_at: i64,
}

/// Device counts by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounts {
    pub active: i64,
    pub expired: i64,
    pub revoked: i64,
    /// Active devices with a heartbeat (`last_seen_at`) at or after the `seen_since` asked for.
    pub seen: i64,
}

/// What a valid token entitles to: the device id to certify (new, or the re-keyed one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub token_id: String,
    pub account_id: String,
    pub device_id: String,
    /// The re-keyed device's current fingerprint (None: a new device).
    pub replaces: Option<String>,
}

/// What the certificate of an enrollment came out as.
#[derive(Clone, Debug)]
pub struct Enrolled {
    pub issued: Issued,
    pub grant: Grant,
    pub label: String,
}

/// Why an enrollment did not happen: a refusal for the device (4xx) or a registry failure.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// 401: no token matches.
    #[error("unknown enrollment token")]
    UnknownToken,
    /// 403: the token has expired.
    #[error("the enrollment token has expired")]
    TokenExpired,
    /// 403: the token has no use left.
    #[error("the enrollment token has been used up")]
    TokenUsedUp,
    /// 403: the re-keyed device was revoked (or deleted) meanwhile.
    #[error("the device {0} of this re-key token is revoked or gone")]
    DeviceRevoked(String),
    /// 400: the CSR is refused.
    #[error("{0}")]
    Csr(#[from] CsrRefusal),
    /// 500: signing failed.
    #[error("{0}")]
    Issue(#[from] IssueError),
    /// 503: the registry failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A registry failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("devices file {path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Conflict(String),
}

/// Why a revoke or re-key did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("no device {0}")]
    NotFound(String),
    #[error("the device {0} is revoked")]
    Revoked(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The registry the service runs on.
pub enum Registry {
    Postgres(PgRegistry),
    File(FileRegistry),
}

impl Registry {
    /// Stores a new token.
    pub async fn create_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        match self {
            Registry::Postgres(r) => r.create_token(t).await,
            Registry::File(r) => r.create_token(t).await,
        }
    }

    /// Enrolls: checks and consumes a use of the token with digest `digest`, runs `sign`
    /// (CSR check and signing) for the granted device id, records the device, durably, and
    /// only then returns.
    pub async fn enroll<F>(&self, digest: &str, now: i64, sign: F) -> Result<Enrolled, EnrollError>
    where
        F: FnOnce(&Grant) -> Result<(Issued, String), EnrollError> + Send,
    {
        match self {
            Registry::Postgres(r) => r.enroll(digest, now, sign).await,
            Registry::File(r) => r.enroll(digest, now, sign).await,
        }
    }

    pub async fn devices(&self, account_id: Option<&str>) -> Result<Vec<Device>, StoreError> {
        match self {
            Registry::Postgres(r) => r.devices(account_id).await,
            Registry::File(r) => Ok(r.devices(account_id).await),
        }
    }

    pub async fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        match self {
            Registry::Postgres(r) => r.device(id).await,
            Registry::File(r) => Ok(r.device(id).await),
        }
    }

    /// Revokes a device (idempotent: the first revocation time stays), refuses its
    /// certificate for good and voids its unused re-key tokens.
    pub async fn revoke(&self, id: &str, now: i64) -> Result<Device, DeviceError> {
        match self {
            Registry::Postgres(r) => r.revoke(id, now).await,
            Registry::File(r) => r.revoke(id, now).await,
        }
    }

    /// Voids every unused token of an account (before its devices are revoked, so none can
    /// enroll meanwhile: an enrollment holds its token row locked, so it either committed
    /// before, and its device is then listed and revoked, or finds the token used up).
    pub async fn void_account_tokens(&self, account_id: &str) -> Result<u64, StoreError> {
        match self {
            Registry::Postgres(r) => r.void_account_tokens(account_id).await,
            Registry::File(r) => r.void_account_tokens(account_id).await,
        }
    }

    /// Stores a one-use re-key token for a device that is not revoked.
    pub async fn create_rekey_token(&self, t: &TokenRecord) -> Result<(), DeviceError> {
        match self {
            Registry::Postgres(r) => r.create_rekey_token(t).await,
            Registry::File(r) => r.create_rekey_token(t).await,
        }
    }

    pub async fn revoked_certificates(
        &self,
        device_id: Option<&str>,
    ) -> Result<Vec<RevokedCertificate>, StoreError> {
        match self {
            Registry::Postgres(r) => r.revoked_certificates(device_id).await,
            Registry::File(r) => Ok(r.revoked_certificates(device_id).await),
        }
    }

    pub async fn counts(&self, now: i64, seen_since: i64) -> Result<DeviceCounts, StoreError> {
        match self {
            Registry::Postgres(r) => r.counts(now, seen_since).await,
            Registry::File(r) => Ok(r.counts(now, seen_since).await),
        }
    }

    /// Whether the registry can be written (Postgres answers; the file's folder is writable).
    pub async fn ready(&self) -> Result<(), StoreError> {
        match self {
            Registry::Postgres(r) => r.ready().await,
            Registry::File(r) => r.ready().await,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Registry::Postgres(r) => r.describe(),
            Registry::File(r) => r.describe(),
        }
    }
}
