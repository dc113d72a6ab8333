//! Portal-app authorization, PEAS-compatible: the verdict `edgeguard authz` (ext_authz) and the
//! portal-auth wasm filter both compute, for the same request and the same store, with the
//! same statuses, messages and headers.
//!
//! Steps (first failure wins), as PEAS: no HTTP attributes → 400; empty path → 400; no app id
//! in the `Portal-Application-ID` header nor after `/v1/` in the path → 400; unknown app →
//! 404; API key required and not matching → 401; account over its monthly limit → 429;
//! otherwise OK with `Portal-Application-ID` / `Portal-Account-ID` (and optionally the
//! `Rl-*` header). Differences from PEAS, all deliberate: the query string is not part of the
//! app id (`/v1/abc?x=1` is app `abc`), API keys are compared in constant time (as SHA-256
//! digests, so plaintext keys need not be held at all), and an app that requires a key but
//! has none configured denies every request instead of becoming public.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::device::{self, ClientAuth, Device, DeviceRefusal, Fingerprint, Peer};

/// The free plan (PEAS `PLAN_FREE`).
pub const PLAN_FREE: &str = "PLAN_FREE";
/// The unlimited plan (PEAS `PLAN_UNLIMITED`).
pub const PLAN_UNLIMITED: &str = "PLAN_UNLIMITED";
/// Monthly relays of the free plan (PEAS `FreeMonthlyRelays`).
pub const FREE_MONTHLY_RELAYS: u64 = 1_000_000;

/// Header carrying the app id (request) and stamped on OK (response).
pub const HEADER_APP_ID: &str = "Portal-Application-ID";
/// Header stamped with the account id on OK.
pub const HEADER_ACCOUNT_ID: &str = "Portal-Account-ID";
/// Rate-limit header of free-plan accounts.
pub const HEADER_RL_PLAN_FREE: &str = "Rl-Plan-Free";
/// Prefix of the rate-limit header carrying a custom monthly limit in millions.
pub const HEADER_RL_USER_LIMIT_PREFIX: &str = "Rl-User-Limit-";

/// PEAS's 429 message.
pub const RATE_LIMITED_MESSAGE: &str = "This account is rate limited. To upgrade your plan or modify your account settings, log in to your account at https://portal.grove.city/";

/// SHA-256 of an API key: what the store keeps instead of the key.
pub type KeyDigest = [u8; 32];

/// Digests an API key.
pub fn key_digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// How an app authenticates requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppAuth {
    /// No key required (PEAS: `secret_key_required` false).
    Public,
    /// The SHA-256 digest of the required key.
    ApiKey {
        #[serde(with = "hex32")]
        digest: KeyDigest,
    },
    /// A key is required but none is configured: every request is refused.
    MissingKey,
}

/// Digests as hex in human-readable formats (JSON snapshot files), raw bytes otherwise.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_bytes(d);
        }
        let mut out = String::with_capacity(64);
        for b in d {
            out.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        if !d.is_human_readable() {
            let bytes = <Vec<u8>>::deserialize(d)?;
            return <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| serde::de::Error::custom("expected 32 bytes"));
        }
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return Err(serde::de::Error::custom("expected 64 hex digits"));
        }
        for (i, o) in out.iter_mut().enumerate() {
            let pair = s.get(2 * i..2 * i + 2).unwrap_or("");
            *o = u8::from_str_radix(pair, 16)
                .map_err(|_| serde::de::Error::custom("expected hex digits"))?;
        }
        Ok(out)
    }
}

/// A portal application as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalApp {
    /// Account id (`""` when the row had none).
    pub account_id: Arc<str>,
    /// Plan type as stored (`PLAN_FREE`, `PLAN_UNLIMITED`, anything else, or `""`).
    pub plan: Arc<str>,
    pub auth: AppAuth,
    /// `accounts.monthly_user_limit` (0 when NULL or negative).
    pub monthly_user_limit: u64,
    /// Key, device certificate, or either (edgeguard's own setting; PEAS knew keys only).
    #[serde(default)]
    pub client_auth: ClientAuth,
}

impl PortalApp {
    /// PEAS: an app has a rate limit iff its plan is free or it has a positive monthly limit.
    pub fn has_rate_limit(&self) -> bool {
        &*self.plan == PLAN_FREE || self.monthly_user_limit > 0
    }

    /// The monthly relay limit enforced with 429 (PEAS `getRateLimit`): free → 1,000,000;
    /// unlimited → its own limit; anything else → none.
    pub fn monthly_limit(&self) -> Option<u64> {
        if !self.has_rate_limit() {
            return None;
        }
        match &*self.plan {
            PLAN_FREE => Some(FREE_MONTHLY_RELAYS),
            PLAN_UNLIMITED if self.monthly_user_limit > 0 => Some(self.monthly_user_limit),
            _ => None,
        }
    }

    /// The rate-limit header PEAS once stamped: `Rl-Plan-Free: <account>` for the free plan,
    /// else `Rl-User-Limit-<limit in millions>: <account>` for a positive limit.
    pub fn rate_limit_header(&self) -> Option<(String, String)> {
        if !self.has_rate_limit() {
            return None;
        }
        if &*self.plan == PLAN_FREE {
            Some((HEADER_RL_PLAN_FREE.to_string(), self.account_id.to_string()))
        } else if self.monthly_user_limit > 0 {
            Some((
                format!(
                    "{HEADER_RL_USER_LIMIT_PREFIX}{}",
                    self.monthly_user_limit / 1_000_000
                ),
                self.account_id.to_string(),
            ))
        } else {
            None
        }
    }
}

/// Read access to the store for one decision.
pub trait PortalView {
    /// Whether the store has loaded at least once.
    fn loaded(&self) -> bool;
    fn app(&self, id: &str) -> Option<&PortalApp>;
    /// This month's relays of an account, when known.
    fn usage(&self, account_id: &str) -> Option<u64>;
    /// The enrolled, not revoked device with this certificate fingerprint.
    fn device(&self, _fingerprint: &Fingerprint) -> Option<&Device> {
        None
    }
}

/// Case-insensitive access to request headers.
pub trait Headers {
    fn get(&self, lower_case_name: &str) -> Option<&str>;
}

/// Options of a decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Stamp `Rl-Plan-Free` / `Rl-User-Limit-<N>` on OK (PEAS before PR #12).
    pub rate_limit_headers: bool,
}

/// Why a request was denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    NoHttp,
    NoPath,
    NoAppId,
    AppNotFound {
        app_id: String,
    },
    Unauthorized {
        app_id: String,
        account_id: String,
        /// Why the client certificate did not do, when the app accepts certificates.
        certificate: Option<DeviceRefusal>,
    },
    RateLimited {
        app_id: String,
        account_id: String,
    },
    /// The store never loaded (edgeguard only; PEAS would not have started).
    StoreNotLoaded,
}

/// gRPC status codes used in `CheckResponse.status`.
pub const GRPC_OK: i32 = 0;
pub const GRPC_PERMISSION_DENIED: i32 = 7;
pub const GRPC_UNAVAILABLE: i32 = 14;

impl Denial {
    /// HTTP status of the denied response.
    pub fn http_status(&self) -> u16 {
        match self {
            Denial::NoHttp | Denial::NoPath | Denial::NoAppId => 400,
            Denial::AppNotFound { .. } => 404,
            Denial::Unauthorized { .. } => 401,
            Denial::RateLimited { .. } => 429,
            Denial::StoreNotLoaded => 503,
        }
    }

    /// `CheckResponse.status.code`.
    pub fn grpc_code(&self) -> i32 {
        match self {
            Denial::StoreNotLoaded => GRPC_UNAVAILABLE,
            _ => GRPC_PERMISSION_DENIED,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            Denial::NoHttp => "HTTP request not found",
            Denial::NoPath => "path not provided",
            Denial::NoAppId => "portal app ID not provided in header or path",
            Denial::AppNotFound { .. } => "portal app not found",
            Denial::Unauthorized { .. } => "unauthorized",
            Denial::RateLimited { .. } => RATE_LIMITED_MESSAGE,
            Denial::StoreNotLoaded => "portal app store is not loaded yet; try again shortly",
        }
    }

    /// PEAS's `error_type` metric label.
    pub fn error_type(&self) -> &'static str {
        match self {
            Denial::NoHttp => "invalid_request_http_request_not_found",
            Denial::NoPath => "invalid_request_path_not_provided",
            Denial::NoAppId => "invalid_request_no_portal_app_id",
            Denial::AppNotFound { .. } => "portal_app_not_found",
            Denial::Unauthorized { .. } => "unauthorized",
            Denial::RateLimited { .. } => "rate_limited",
            Denial::StoreNotLoaded => "store_not_loaded",
        }
    }

    /// The app id label (empty when there is none yet).
    pub fn app_id(&self) -> &str {
        match self {
            Denial::AppNotFound { app_id }
            | Denial::Unauthorized { app_id, .. }
            | Denial::RateLimited { app_id, .. } => app_id,
            _ => "",
        }
    }

    /// The account id label (empty when unknown).
    pub fn account_id(&self) -> &str {
        match self {
            Denial::Unauthorized { account_id, .. } | Denial::RateLimited { account_id, .. } => {
                account_id
            }
            _ => "",
        }
    }

    /// The JSON body of the denied response.
    pub fn body(&self) -> String {
        crate::reply::json_body(self.http_status(), self.message())
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.http_status(), self.message())?;
        if let Denial::Unauthorized {
            certificate: Some(r),
            ..
        } = self
        {
            write!(f, " ({})", r.as_str())?;
        }
        Ok(())
    }
}

/// An allowed request: what to stamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed<'a> {
    pub app_id: String,
    pub app: &'a PortalApp,
    /// The device whose certificate authenticated the request (apps with
    /// [`ClientAuth::Certificate`] or [`ClientAuth::Either`]).
    pub device: Option<&'a Device>,
    /// Headers to set on the request, in order, replacing client-sent copies.
    pub headers: Vec<(String, String)>,
    /// The rate-limit decision PEAS records: `no_limit_configured` or `allowed`.
    pub rate_limit_decision: &'static str,
}

/// The app id of a request: a non-empty `Portal-Application-ID` header, else the first path
/// segment after `/v1/` (query string and fragment excluded).
pub fn app_id<'a>(path: &'a str, headers: &'a dyn Headers) -> Option<&'a str> {
    if let Some(h) = headers.get("portal-application-id") {
        if !h.is_empty() {
            return Some(h);
        }
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let rest = path.strip_prefix("/v1/")?;
    let segment = rest.split('/').next().unwrap_or("");
    (!segment.is_empty()).then_some(segment)
}

/// The API key a request presents: the `Authorization` value, minus an exact `Bearer `
/// prefix when the value is longer than it (PEAS semantics).
pub fn presented_key(headers: &dyn Headers) -> Option<&str> {
    let value = headers.get("authorization")?;
    if value.is_empty() {
        return None;
    }
    if value.len() > 7 {
        if let Some(rest) = value.strip_prefix("Bearer ") {
            return Some(rest);
        }
    }
    Some(value)
}

fn key_matches(expected: &KeyDigest, presented: Option<&str>) -> bool {
    match presented {
        Some(k) => bool::from(key_digest(k).ct_eq(expected)),
        None => false,
    }
}

/// Decides one request. `http` is `None` when the CheckRequest had no HTTP attributes; `peer`
/// gives the client certificate the request came with (over mutual TLS), if any: asked only
/// for apps that accept certificates (it costs a host call in a filter).
pub fn check<'v>(
    http: Option<(&str, &dyn Headers)>,
    view: &'v dyn PortalView,
    options: CheckOptions,
    peer: &dyn Fn() -> Option<Peer>,
) -> Result<Allowed<'v>, Denial> {
    let (path, headers) = http.ok_or(Denial::NoHttp)?;
    if path.is_empty() {
        return Err(Denial::NoPath);
    }
    let id = app_id(path, headers).ok_or(Denial::NoAppId)?;
    if !view.loaded() {
        return Err(Denial::StoreNotLoaded);
    }
    let app = view.app(id).ok_or_else(|| Denial::AppNotFound {
        app_id: id.to_string(),
    })?;
    let key_ok = || match &app.auth {
        AppAuth::Public => true,
        AppAuth::ApiKey { digest } => key_matches(digest, presented_key(headers)),
        AppAuth::MissingKey => false,
    };
    let (authorized, device, certificate) = if app.client_auth.accepts_certificate() {
        match device::authenticate(peer().as_ref(), |f| view.device(f), &app.account_id) {
            Ok(d) => (true, Some(d), None),
            Err(r) => (app.client_auth.accepts_key() && key_ok(), None, Some(r)),
        }
    } else {
        (key_ok(), None, None)
    };
    if !authorized {
        return Err(Denial::Unauthorized {
            app_id: id.to_string(),
            account_id: app.account_id.to_string(),
            certificate,
        });
    }
    let rate_limit_decision = if app.has_rate_limit() {
        let limited = match (app.monthly_limit(), view.usage(&app.account_id)) {
            (Some(limit), Some(usage)) => usage > limit,
            _ => false,
        };
        if limited {
            return Err(Denial::RateLimited {
                app_id: id.to_string(),
                account_id: app.account_id.to_string(),
            });
        }
        "allowed"
    } else {
        "no_limit_configured"
    };
    let mut stamped = vec![
        (HEADER_APP_ID.to_string(), id.to_string()),
        (HEADER_ACCOUNT_ID.to_string(), app.account_id.to_string()),
    ];
    if let Some(d) = device {
        stamped.push((device::HEADER_DEVICE_ID.to_string(), d.id.to_string()));
    }
    if options.rate_limit_headers {
        if let Some(h) = app.rate_limit_header() {
            stamped.push(h);
        }
    }
    Ok(Allowed {
        app_id: id.to_string(),
        app,
        device,
        headers: stamped,
        rate_limit_decision,
    })
}

/// Whether a client request header must be removed before the verdict's headers are set:
/// every `Portal-*` and `Rl-*` header is the proxy's to set.
pub fn is_owned_header(name: &str) -> bool {
    let n = name.as_bytes();
    n.len() >= 7 && n[..7].eq_ignore_ascii_case(b"portal-")
        || n.len() >= 3 && n[..3].eq_ignore_ascii_case(b"rl-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct H(Vec<(&'static str, &'static str)>);
    impl Headers for H {
        fn get(&self, name: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        }
    }

    #[derive(Default)]
    struct Store {
        loaded: bool,
        apps: HashMap<String, PortalApp>,
        usage: HashMap<String, u64>,
        devices: HashMap<Fingerprint, Device>,
    }
    impl PortalView for Store {
        fn loaded(&self) -> bool {
            self.loaded
        }
        fn app(&self, id: &str) -> Option<&PortalApp> {
            self.apps.get(id)
        }
        fn usage(&self, account: &str) -> Option<u64> {
            self.usage.get(account).copied()
        }
        fn device(&self, f: &Fingerprint) -> Option<&Device> {
            self.devices.get(f)
        }
    }

    fn app(account: &str, plan: &str, limit: u64, key: Option<&str>) -> PortalApp {
        PortalApp {
            account_id: account.into(),
            plan: plan.into(),
            auth: match key {
                None => AppAuth::Public,
                Some("") => AppAuth::MissingKey,
                Some(k) => AppAuth::ApiKey {
                    digest: key_digest(k),
                },
            },
            monthly_user_limit: limit,
            client_auth: ClientAuth::Key,
        }
    }

    fn store() -> Store {
        let mut s = Store {
            loaded: true,
            ..Default::default()
        };
        s.apps.insert("pub".into(), app("a1", "PLAN_FREE", 0, None));
        s.apps.insert(
            "keyed".into(),
            app("a2", "PLAN_UNLIMITED", 40_000_000, Some("s3cret")),
        );
        s.apps
            .insert("nokey".into(), app("a3", "PLAN_FREE", 0, Some("")));
        s.apps
            .insert("other".into(), app("a4", "PLAN_ENTERPRISE", 0, None));
        s.usage.insert("a1".into(), 1_000_000);
        s
    }

    fn run(
        path: &str,
        headers: Vec<(&'static str, &'static str)>,
        s: &Store,
    ) -> Result<Vec<(String, String)>, Denial> {
        let h = H(headers);
        check(
            Some((path, &h)),
            s,
            CheckOptions {
                rate_limit_headers: true,
            },
            &|| None,
        )
        .map(|a| a.headers)
    }

    fn run_as(
        path: &str,
        headers: Vec<(&'static str, &'static str)>,
        s: &Store,
        peer: Option<Peer>,
    ) -> Result<Vec<(String, String)>, Denial> {
        let h = H(headers);
        check(Some((path, &h)), s, CheckOptions::default(), &|| peer).map(|a| a.headers)
    }

    #[test]
    fn devices_by_client_auth_mode() {
        let mut s = store();
        let mut cert_app = app("a2", "PLAN_FREE", 0, Some("s3cret"));
        cert_app.client_auth = ClientAuth::Certificate;
        s.apps.insert("cert".into(), cert_app.clone());
        cert_app.client_auth = ClientAuth::Either;
        s.apps.insert("either".into(), cert_app);
        s.devices.insert(
            [7; 32],
            Device {
                id: "dev1".into(),
                account_id: "a2".into(),
                not_after: 2_000,
            },
        );
        s.devices.insert(
            [8; 32],
            Device {
                id: "dev2".into(),
                account_id: "a1".into(),
                not_after: 2_000,
            },
        );
        let peer = |f: u8, now: i64| {
            Some(Peer {
                fingerprint: [f; 32],
                now,
            })
        };
        let key = vec![("authorization", "s3cret")];
        // certificate: the device of the account, not a key
        let ok = run_as("/v1/cert", vec![], &s, peer(7, 1_000)).unwrap();
        assert_eq!(ok[2], ("Portal-Device-ID".into(), "dev1".into()));
        assert_eq!(ok[1], ("Portal-Account-ID".into(), "a2".into()));
        let refused = |r: Result<_, Denial>| match r {
            Err(Denial::Unauthorized { certificate, .. }) => certificate,
            other => panic!("expected a 401, got {other:?}"),
        };
        assert_eq!(
            refused(run_as("/v1/cert", key.clone(), &s, None)),
            Some(DeviceRefusal::NoCertificate)
        );
        assert_eq!(
            refused(run_as("/v1/cert", key.clone(), &s, peer(9, 1_000))),
            Some(DeviceRefusal::UnknownCertificate)
        );
        assert_eq!(
            refused(run_as("/v1/cert", vec![], &s, peer(7, 2_000))),
            Some(DeviceRefusal::Expired)
        );
        assert_eq!(
            refused(run_as("/v1/cert", vec![], &s, peer(8, 1_000))),
            Some(DeviceRefusal::OtherAccount)
        );
        // either: the certificate, or the key
        assert!(run_as("/v1/either", vec![], &s, peer(7, 1_000)).is_ok());
        let by_key = run_as("/v1/either", key.clone(), &s, peer(9, 1_000)).unwrap();
        assert_eq!(by_key.len(), 2, "no device header when the key did it");
        assert!(run_as("/v1/either", key.clone(), &s, None).is_ok());
        assert_eq!(
            refused(run_as("/v1/either", vec![], &s, peer(8, 1_000))),
            Some(DeviceRefusal::OtherAccount)
        );
        // key (the default): a certificate neither helps nor hurts
        assert!(run_as("/v1/keyed", vec![], &s, peer(7, 1_000)).is_err());
        let d = run_as("/v1/keyed", vec![], &s, peer(7, 1_000)).unwrap_err();
        assert_eq!(refused(Err(d.clone())), None);
        assert_eq!(d.to_string(), "401 unauthorized");
        let d = run_as("/v1/cert", vec![], &s, peer(7, 5_000)).unwrap_err();
        assert_eq!(
            d.to_string(),
            "401 unauthorized (device certificate expired)"
        );
    }

    #[test]
    fn peas_statuses() {
        let s = store();
        assert_eq!(
            check(None, &s, CheckOptions::default(), &|| None).unwrap_err(),
            Denial::NoHttp
        );
        assert_eq!(
            run("", vec![("portal-application-id", "pub")], &s).unwrap_err(),
            Denial::NoPath
        );
        for p in ["/v1", "/v1/", "/v1//x", "/x/pub", "/v2/pub"] {
            assert_eq!(run(p, vec![], &s).unwrap_err(), Denial::NoAppId, "{p}");
        }
        assert_eq!(run("/v1/nope", vec![], &s).unwrap_err().http_status(), 404);
        assert_eq!(run("/v1/keyed", vec![], &s).unwrap_err().http_status(), 401);
        assert_eq!(
            run("/v1/keyed", vec![("authorization", "wrong")], &s)
                .unwrap_err()
                .http_status(),
            401
        );
        assert_eq!(
            run("/v1/nokey", vec![("authorization", "")], &s)
                .unwrap_err()
                .http_status(),
            401
        );
        let ok = run(
            "/v1/keyed/eth?x=1",
            vec![("authorization", "Bearer s3cret")],
            &s,
        )
        .unwrap();
        assert_eq!(
            ok,
            vec![
                ("Portal-Application-ID".to_string(), "keyed".to_string()),
                ("Portal-Account-ID".to_string(), "a2".to_string()),
                ("Rl-User-Limit-40".to_string(), "a2".to_string()),
            ]
        );
        assert!(run("/v1/keyed", vec![("authorization", "s3cret")], &s).is_ok());
        // "bearer " is not the prefix (case-sensitive), and "Bearer " alone is the key itself
        assert!(run("/v1/keyed", vec![("authorization", "bearer s3cret")], &s).is_err());
        // the header wins over the path; the query string is not part of the id
        let ok = run("/v1/nope", vec![("Portal-Application-ID", "pub")], &s).unwrap();
        assert_eq!(ok[2], ("Rl-Plan-Free".to_string(), "a1".to_string()));
        assert!(run("/v1/pub?x=1", vec![], &s).is_ok());
        assert!(run("/v1/other", vec![], &s).is_ok());
    }

    #[test]
    fn monthly_limits_are_strictly_greater() {
        let mut s = store();
        assert!(
            run("/v1/pub", vec![], &s).is_ok(),
            "usage == limit is allowed"
        );
        s.usage.insert("a1".into(), 1_000_001);
        let d = run("/v1/pub", vec![], &s).unwrap_err();
        assert_eq!((d.http_status(), d.message()), (429, RATE_LIMITED_MESSAGE));
        s.usage.insert("a2".into(), 40_000_001);
        assert_eq!(
            run("/v1/keyed", vec![("authorization", "s3cret")], &s)
                .unwrap_err()
                .http_status(),
            429
        );
        // a plan without a limit rule is never limited
        s.usage.insert("a4".into(), u64::MAX);
        assert!(run("/v1/other", vec![], &s).is_ok());
    }

    #[test]
    fn store_not_loaded_is_503() {
        let s = Store::default();
        let d = run("/v1/pub", vec![], &s).unwrap_err();
        assert_eq!((d.http_status(), d.grpc_code()), (503, GRPC_UNAVAILABLE));
        // malformed requests are still told so
        assert_eq!(run("/x", vec![], &s).unwrap_err(), Denial::NoAppId);
    }

    #[test]
    fn bodies_are_json() {
        let d = Denial::AppNotFound { app_id: "x".into() };
        assert_eq!(
            d.body(),
            r#"{"code": 404, "message": "portal app not found"}"#
        );
        let v: serde_json::Value = serde_json::from_str(
            &Denial::RateLimited {
                app_id: String::new(),
                account_id: String::new(),
            }
            .body(),
        )
        .unwrap();
        assert_eq!(v["code"], 429);
    }

    #[test]
    fn owned_headers() {
        for h in [
            "Portal-Account-ID",
            "portal-application-id",
            "RL-Plan-Free",
            "rl-user-limit-40",
        ] {
            assert!(is_owned_header(h), "{h}");
        }
        for h in ["authorization", "portalx", "rl", "x-rl-a"] {
            assert!(!is_owned_header(h), "{h}");
        }
    }

    #[test]
    fn rate_limit_rules() {
        assert_eq!(
            app("a", "PLAN_FREE", 5_000_000, None).monthly_limit(),
            Some(FREE_MONTHLY_RELAYS)
        );
        assert_eq!(app("a", "PLAN_UNLIMITED", 0, None).monthly_limit(), None);
        assert_eq!(app("a", "PLAN_UNLIMITED", 5, None).monthly_limit(), Some(5));
        assert_eq!(app("a", "OTHER", 5, None).monthly_limit(), None);
        assert_eq!(
            app("a", "OTHER", 5_000_000, None).rate_limit_header(),
            Some(("Rl-User-Limit-5".into(), "a".into()))
        );
        assert_eq!(app("a", "", 0, None).rate_limit_header(), None);
    }

    #[test]
    fn serde_round_trip() {
        let a = app("acc", "PLAN_FREE", 3, Some("k"));
        let j = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<PortalApp>(&j).unwrap(), a);
    }
}
