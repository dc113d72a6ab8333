//! Who is asking: an OpenID Connect token (`Authorization: Bearer <jwt>`), an API key
//! (`X-API-Key: <key>`, or `Authorization: Bearer <key>` when it is not a JWT), or, in the
//! clearly named development mode, anyone.
//!
//! Development mode (`--dev-allow-anyone`) authenticates every request: credentials that a
//! configured method accepts still count, and everything else (no credentials, bad ones) gets
//! the configured development claims. It exists for `make run` and is announced by a warning
//! at start-up.

use std::sync::Arc;

use axum::http::HeaderMap;
use serde_json::Value as Json;

use crate::api_keys::ApiKeys;
use crate::metrics::AuthMethod;
use crate::oidc::Oidc;
use crate::refusal::{Reason, Refusal};

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub method: AuthMethod,
    /// The claims the policy sees (a JSON object).
    pub claims: Json,
}

impl Caller {
    pub fn subject(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Json::as_str)
    }
}

/// The configured ways in.
pub struct Authenticator {
    pub oidc: Option<Arc<Oidc>>,
    pub api_keys: ApiKeys,
    /// Development mode: the claims everyone gets.
    pub dev_claims: Option<Json>,
}

/// The credentials a request carries.
enum Presented<'a> {
    None,
    Bearer(&'a str),
    ApiKey(&'a [u8]),
    /// An `Authorization` header that is not `Bearer <...>`, or bytes that are not text.
    Malformed,
}

fn presented(headers: &HeaderMap) -> Presented<'_> {
    if let Some(key) = headers.get("x-api-key") {
        return Presented::ApiKey(key.as_bytes());
    }
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Presented::None;
    };
    let Ok(value) = value.to_str() else {
        return Presented::Malformed;
    };
    match value.split_at_checked(7) {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("bearer ") && !rest.trim().is_empty() =>
        {
            Presented::Bearer(rest.trim())
        }
        _ => Presented::Malformed,
    }
}

/// Whether a bearer value has the form of a JWS (three base64url parts).
fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

impl Authenticator {
    async fn check(&self, presented: Presented<'_>) -> Result<Caller, Refusal> {
        let api_key = |key: &[u8]| {
            self.api_keys
                .check(key)
                .map(|k| Caller {
                    method: AuthMethod::ApiKey,
                    claims: k.claims.clone(),
                })
                .ok_or_else(|| Refusal::new(Reason::InvalidApiKey, "the API key is not valid"))
        };
        match presented {
            Presented::None => Err(Refusal::new(
                Reason::MissingCredentials,
                "send a bearer token (Authorization: Bearer <token>) or an API key (X-API-Key)",
            )),
            Presented::Malformed => Err(Refusal::new(
                Reason::InvalidToken,
                "the Authorization header must be 'Bearer <token>'",
            )),
            Presented::ApiKey(key) if !self.api_keys.is_empty() => api_key(key),
            Presented::ApiKey(_) => Err(Refusal::new(
                Reason::InvalidApiKey,
                "API keys are not accepted here",
            )),
            Presented::Bearer(token) => match &self.oidc {
                Some(oidc) if looks_like_jwt(token) || self.api_keys.is_empty() => {
                    let claims = oidc.verify(token).await?;
                    Ok(Caller {
                        method: AuthMethod::Oidc,
                        claims,
                    })
                }
                _ if !self.api_keys.is_empty() => api_key(token.as_bytes()),
                _ => Err(Refusal::new(
                    Reason::InvalidToken,
                    "bearer tokens are not accepted here",
                )),
            },
        }
    }

    /// Authenticates a request.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let result = self.check(presented(headers)).await;
        match (&self.dev_claims, result) {
            (_, Ok(caller)) => Ok(caller),
            (Some(claims), Err(_)) => Ok(Caller {
                method: AuthMethod::Dev,
                claims: claims.clone(),
            }),
            (None, Err(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    const KEY: &[u8] = b"0123456789abcdef0123";

    fn keys_only() -> Authenticator {
        Authenticator {
            oidc: None,
            api_keys: ApiKeys::parse_list("svc=0123456789abcdef0123").unwrap(),
            dev_claims: None,
        }
    }

    #[test]
    fn api_keys_in_either_header() {
        let a = keys_only();
        let c = run(a.authenticate(&headers(&[("x-api-key", KEY)]))).unwrap();
        assert_eq!((c.method, c.subject()), (AuthMethod::ApiKey, Some("svc")));
        let c = run(a.authenticate(&headers(&[(
            "authorization",
            b"Bearer 0123456789abcdef0123",
        )])))
        .unwrap();
        assert_eq!(c.subject(), Some("svc"));
        let reason = |h: HeaderMap| run(a.authenticate(&h)).unwrap_err().reason;
        assert_eq!(reason(headers(&[])), Reason::MissingCredentials);
        assert_eq!(
            reason(headers(&[("x-api-key", b"wrong-key-wrong-key")])),
            Reason::InvalidApiKey
        );
        assert_eq!(
            reason(headers(&[("authorization", b"Basic abc")])),
            Reason::InvalidToken
        );
        assert_eq!(
            reason(headers(&[("authorization", b"Bearer ")])),
            Reason::InvalidToken
        );
        assert_eq!(
            reason(headers(&[("authorization", b"Bearer \xff\xfe")])),
            Reason::InvalidToken
        );
    }

    #[test]
    fn dev_mode_lets_everyone_in_but_prefers_real_credentials() {
        let mut a = keys_only();
        a.dev_claims = Some(json!({"sub": "dev-user", "roles": ["admin"]}));
        let c = run(a.authenticate(&headers(&[]))).unwrap();
        assert_eq!((c.method, c.subject()), (AuthMethod::Dev, Some("dev-user")));
        let c = run(a.authenticate(&headers(&[("x-api-key", b"wrong-key-wrong-key")]))).unwrap();
        assert_eq!(c.method, AuthMethod::Dev);
        let c = run(a.authenticate(&headers(&[("x-api-key", KEY)]))).unwrap();
        assert_eq!(c.method, AuthMethod::ApiKey);
    }

    #[test]
    fn nothing_configured_refuses() {
        let a = Authenticator {
            oidc: None,
            api_keys: ApiKeys::default(),
            dev_claims: None,
        };
        assert_eq!(
            run(a.authenticate(&headers(&[("x-api-key", KEY)])))
                .unwrap_err()
                .reason,
            Reason::InvalidApiKey
        );
        assert_eq!(
            run(a.authenticate(&headers(&[("authorization", b"Bearer a.b.c")])))
                .unwrap_err()
                .reason,
            Reason::InvalidToken
        );
    }
}
