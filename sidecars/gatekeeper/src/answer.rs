//! What the gatekeeper answers: the token's claims, and Electric's configuration object.
//!
//! ```json
//! {"url": "https://api.example.com/v1/shape",
//!  "headers": {"Authorization": "Bearer eyJ..."},
//!  "table": "items",
//!  "where": "(owner_id = $1) AND (status = $2)", "params": {"1": "alice", "2": "open"},
//!  "columns": ["id", "title"], "replica": "default", "log": "full",
//!  "expires_at": 1764638220,
//!  "query": {"table": "items", "where": "(owner_id = $1) AND (status = $2)",
//!            "params[1]": "alice", "params[2]": "open", "columns": "id,title"}}
//! ```
//!
//! `url`, `headers`, `table`, `where` and `columns` are Electric's gatekeeper's keys, `table`
//! quoted for the URL as Electric's client expects (`url_table_name`), `columns` the raw names
//! (Electric's TypeScript client quotes each element of a `columns` array itself).
//! `where`/`params`/`columns` are present exactly when the token binds them, and the client
//! must send exactly these (jwt-shape compares every one). `query` spells out the shape's
//! query parameters with their exact values, `columns` written as a URL value.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value as Json};

use crate::decision::Grant;
use crate::electric::{url_columns, url_table_name, LogMode, Replica};
use crate::request::params_json;

/// The token's registered claims.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub ttl_s: u64,
}

/// A random token id (128 bits, base64url).
pub fn new_jti() -> String {
    let bytes: [u8; 16] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The claims of a token carrying `shape`.
pub fn claims(
    settings: &TokenSettings,
    shape: Json,
    subject: Option<&str>,
    now: u64,
    jti: &str,
) -> Json {
    let mut c = Map::new();
    c.insert("iss".into(), json!(settings.issuer));
    match settings.audiences.as_slice() {
        [one] => {
            c.insert("aud".into(), json!(one));
        }
        [] => {}
        many => {
            c.insert("aud".into(), json!(many));
        }
    }
    if let Some(sub) = subject {
        c.insert("sub".into(), json!(sub));
    }
    c.insert("iat".into(), json!(now));
    c.insert("nbf".into(), json!(now));
    c.insert("exp".into(), json!(now.saturating_add(settings.ttl_s)));
    c.insert("jti".into(), json!(jti));
    c.insert(crate::shape_claim::CLAIM.into(), shape);
    Json::Object(c)
}

/// Electric's configuration object for a signed token.
pub fn configuration(shape_url: &str, token: &str, grant: &Grant, expires_at: u64) -> Json {
    let table = url_table_name(grant.namespace.as_deref(), &grant.table);
    let mut out = Map::new();
    let mut query = Map::new();
    out.insert("url".into(), json!(shape_url));
    out.insert(
        "headers".into(),
        json!({"Authorization": format!("Bearer {token}")}),
    );
    out.insert("table".into(), json!(table));
    query.insert("table".into(), json!(table));
    if let Some(w) = &grant.where_clause {
        out.insert("where".into(), json!(w));
        query.insert("where".into(), json!(w));
    }
    if !grant.params.is_empty() {
        out.insert("params".into(), params_json(&grant.params));
        for (n, v) in &grant.params {
            query.insert(format!("params[{n}]"), json!(v));
        }
    }
    if let Some(cols) = &grant.columns {
        out.insert("columns".into(), json!(cols));
        query.insert("columns".into(), json!(url_columns(cols)));
    }
    out.insert("replica".into(), json!(grant.replica.as_str()));
    if grant.replica != Replica::Default {
        query.insert("replica".into(), json!(grant.replica.as_str()));
    }
    out.insert("log".into(), json!(grant.log.as_str()));
    if grant.log != LogMode::Full {
        query.insert("log".into(), json!(grant.log.as_str()));
    }
    out.insert("expires_at".into(), json!(expires_at));
    out.insert("query".into(), Json::Object(query));
    Json::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn configuration_says_exactly_what_to_send() {
        let grant = Grant {
            rule: "r".into(),
            namespace: Some("App".into()),
            table: "GkItems".into(),
            where_clause: Some("(owner_id = $1) AND (s = $2)".into()),
            params: BTreeMap::from([(1, "alice".into()), (2, "open".into())]),
            columns: Some(vec!["id".into(), "Title".into()]),
            replica: Replica::Full,
            log: LogMode::Full,
            subsets: false,
        };
        let c = configuration("http://x/v1/shape", "T", &grant, 99);
        assert_eq!(
            c,
            json!({"url": "http://x/v1/shape", "headers": {"Authorization": "Bearer T"},
                   "table": "\"App\".\"GkItems\"", "where": "(owner_id = $1) AND (s = $2)",
                   "params": {"1": "alice", "2": "open"}, "columns": ["id", "Title"],
                   "replica": "full", "log": "full", "expires_at": 99,
                   "query": {"table": "\"App\".\"GkItems\"", "where": "(owner_id = $1) AND (s = $2)",
                             "params[1]": "alice", "params[2]": "open", "columns": "id,\"Title\"",
                             "replica": "full"}})
        );
        let bare = Grant {
            namespace: None,
            table: "items".into(),
            where_clause: None,
            params: BTreeMap::new(),
            columns: None,
            replica: Replica::Default,
            log: LogMode::ChangesOnly,
            ..grant
        };
        let c = configuration("u", "T", &bare, 1);
        assert_eq!(c["query"], json!({"table": "items", "log": "changes_only"}));
        assert!(
            c.get("where").is_none() && c.get("params").is_none() && c.get("columns").is_none()
        );
    }

    #[test]
    fn registered_claims() {
        let s = TokenSettings {
            issuer: "https://gk".into(),
            audiences: vec!["electric".into()],
            ttl_s: 600,
        };
        let c = claims(&s, json!({"table": "t"}), Some("alice"), 1000, "j1");
        assert_eq!(
            c,
            json!({"iss": "https://gk", "aud": "electric", "sub": "alice", "iat": 1000, "nbf": 1000,
                   "exp": 1600, "jti": "j1", "shape": {"table": "t"}})
        );
        let s = TokenSettings {
            audiences: vec!["a".into(), "b".into()],
            ..s
        };
        assert_eq!(
            claims(&s, json!({}), None, 0, "j")["aud"],
            json!(["a", "b"])
        );
        assert_ne!(new_jti(), new_jti());
        assert_eq!(new_jti().len(), 22);
    }
}
