//! `edgeguard enroll`: device identity for fleets of edge devices.
//!
//! An operator (bearer admin token) creates one-time **enrollment tokens** bound to an
//! account, with an expiry and a use count; a device posts a CSR with its token to
//! `POST /enroll/v1` and gets back a client certificate chain signed by the fleet CA
//! ([`ca`], issued with rcgen): CN = the device id edgeguard assigns, one URI SAN
//! `spiffe://<trust domain>/device/<id>`, clientAuth. The CSR must prove possession of its
//! key, use a strong key and ask for no identity of its own ([`csr`]). The device's
//! certificate (SHA-256 fingerprint, serial, validity), SPIFFE id and account are recorded in
//! the registry ([`registry`]: Postgres, migration 0005, or a YAML file) durably before the
//! certificate is answered. Admin endpoints list devices, revoke them and re-key them (a
//! one-use token bound to the device: the new certificate keeps the device id, the old
//! fingerprint stays refused). [`server`] has the HTTP API.
//!
//! Not in this crate (yet): the Envoy mTLS listener, device verdicts in portal-auth and
//! `edgeguard authz`, revocation enforced in Envoy, certificate-bound tokens, heartbeats.

pub mod ca;
pub mod config;
pub mod csr;
pub mod metrics;
pub mod registry;
pub mod registry_file;
pub mod registry_pg;
pub mod server;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;

pub use config::EnrollArgs;
pub use server::EnrollError;

/// Runs `edgeguard enroll` until SIGINT/SIGTERM.
pub fn main(args: EnrollArgs) -> Result<(), EnrollError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(EnrollError::Runtime)?
        .block_on(server::run(args))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Bytes of even-length hex (either case).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// `n` random bytes from the OS, as hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex(&b)
}

/// A new device id: `dev_` and 20 hex digits (80 random bits).
pub fn new_device_id() -> String {
    format!("dev_{}", random_hex(10))
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Unix seconds as RFC 3339 (UTC, whole seconds), and back; serde helpers for both.
pub mod rfc3339 {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn format(secs: i64) -> String {
        let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
        humantime::format_rfc3339_seconds(t).to_string()
    }

    pub fn parse(s: &str) -> Option<i64> {
        let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
        let d = t.duration_since(UNIX_EPOCH).ok()?;
        i64::try_from(d.as_secs()).ok()
    }

    pub fn serialize<S: Serializer>(secs: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*secs))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {s}")))
    }

    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(secs: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
            match secs {
                Some(v) => s.serialize_str(&super::format(*v)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(s) => super::parse(&s)
                    .map(Some)
                    .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {s}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_times_round_trip() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00AB10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(unhex("abc"), None);
        let id = new_device_id();
        assert_eq!(id.len(), 24);
        assert!(id.starts_with("dev_"));
        assert_eq!(rfc3339::format(1_800_000_000), "2027-01-15T08:00:00Z");
        assert_eq!(rfc3339::parse("2027-01-15T08:00:00Z"), Some(1_800_000_000));
    }
}
