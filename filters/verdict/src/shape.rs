//! Electric shape binding: the shape a request asks for (`GET /v1/shape?table=..&where=..`)
//! against the shape a token allows (its `shape` claim), both read into one canonical form.
//!
//! Every parameter that defines a shape in Electric (`table`, `where`, `params[n]`, `columns`,
//! `replica`, `log`, plus `queryable_columns` and `experimental_compaction`) is bound; a
//! parameter that is absent equals one that is null, and Electric's defaults are applied on
//! both sides (`replica` → `default`, `log` → `full`, schema → `public`). Pagination and
//! liveness parameters pass; the Electric `secret`/`api_secret` are never taken from clients.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::identifier::{self, IdentifierError, Relation};
use crate::query::QueryParam;

/// Query parameters that define a shape (besides `params[n]`).
pub const SHAPE_PARAMS: &[&str] = &[
    "table",
    "where",
    "columns",
    "replica",
    "log",
    "queryable_columns",
    "experimental_compaction",
];

/// Parameters that only page through or follow a shape; they pass unchecked.
pub const PASS_THROUGH_PARAMS: &[&str] = &[
    "offset",
    "handle",
    "live",
    "live_sse",
    "experimental_live_sse",
    "cursor",
    "expired_handle",
    "cache-buster",
];

/// Electric's API secret, which only the proxy may set.
pub const SECRET_PARAMS: &[&str] = &["secret", "api_secret"];

/// `replica` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replica {
    Default,
    Full,
}

/// `log` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogMode {
    Full,
    ChangesOnly,
}

/// A shape in canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub relation: Relation,
    pub where_clause: Option<String>,
    /// `params[n]` values by n (1-based).
    pub params: BTreeMap<u32, String>,
    /// Sorted, de-duplicated column names; `None` means all columns.
    pub columns: Option<Vec<String>>,
    pub queryable_columns: Option<Vec<String>>,
    pub replica: Replica,
    pub log: LogMode,
    pub compaction: bool,
    /// The claim allows subset requests (`"subsets": true`, see [`crate::subset`]); always
    /// `false` for a request's shape.
    pub subsets: bool,
}

/// What kind of parameter a (decoded) query parameter name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// One of [`SHAPE_PARAMS`] or `params[n]`.
    Shape,
    /// `secret` / `api_secret`.
    Secret,
    /// Pagination, liveness or `subset__*`.
    PassThrough,
    /// Anything else (custom parameters an application sends to its proxy).
    Other,
}

/// Classifies a decoded parameter name.
pub fn classify(name: &str) -> ParamKind {
    let base = name.split('[').next().unwrap_or(name);
    if SHAPE_PARAMS.contains(&base) || base == "params" {
        ParamKind::Shape
    } else if SECRET_PARAMS.contains(&base) {
        ParamKind::Secret
    } else if PASS_THROUGH_PARAMS.contains(&name) || name.starts_with("subset__") {
        ParamKind::PassThrough
    } else {
        ParamKind::Other
    }
}

/// Why a shape request's query string was refused (a 400).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapeQueryError {
    MissingTable,
    Duplicate(String),
    EncodedName(String),
    Invalid { param: String, reason: String },
}

impl fmt::Display for ShapeQueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShapeQueryError::MissingTable => f.write_str("missing required parameter 'table'"),
            ShapeQueryError::Duplicate(p) => write!(f, "parameter '{p}' is given more than once"),
            ShapeQueryError::EncodedName(p) => {
                write!(f, "parameter name '{p}' must not be percent-encoded")
            }
            ShapeQueryError::Invalid { param, reason } => {
                write!(f, "invalid parameter '{param}': {reason}")
            }
        }
    }
}

impl std::error::Error for ShapeQueryError {}

/// Why a shape claim could not be read (the token does not cover anything: a 403).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimError {
    Missing(String),
    NotObject(String),
    MissingTable,
    BadField { field: String, reason: String },
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimError::Missing(c) => write!(f, "token has no '{c}' claim"),
            ClaimError::NotObject(c) => write!(f, "claim '{c}' is not an object"),
            ClaimError::MissingTable => f.write_str("shape claim has no 'table'"),
            ClaimError::BadField { field, reason } => {
                write!(f, "shape claim field '{field}' is invalid: {reason}")
            }
        }
    }
}

impl std::error::Error for ClaimError {}

/// The first shape field where a request differs from the token's claim (a 403).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch(pub &'static str);

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token does not cover this shape: '{}' differs", self.0)
    }
}

fn invalid(param: &str, reason: impl fmt::Display) -> ShapeQueryError {
    ShapeQueryError::Invalid {
        param: param.to_string(),
        reason: reason.to_string(),
    }
}

/// Parses `n` of `params[n]`: a positive decimal without leading zeros.
fn param_index(name: &str) -> Option<u32> {
    let inner = name.strip_prefix("params[")?.strip_suffix(']')?;
    if inner.is_empty() || inner.starts_with('0') || !inner.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    inner.parse().ok().filter(|n| *n > 0)
}

fn parse_replica(v: &str) -> Option<Replica> {
    match v {
        "default" => Some(Replica::Default),
        "full" => Some(Replica::Full),
        _ => None,
    }
}

fn parse_log(v: &str) -> Option<LogMode> {
    match v {
        "full" => Some(LogMode::Full),
        "changes_only" => Some(LogMode::ChangesOnly),
        _ => None,
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Reads the shape a request asks for. Refuses duplicated or percent-encoded shape-defining
/// (and secret) parameter names so the proxy and Electric cannot disagree about the shape.
pub fn shape_from_query(params: &[QueryParam<'_>]) -> Result<Shape, ShapeQueryError> {
    let mut seen: Vec<&str> = Vec::new();
    let mut table = None;
    let mut where_clause = None;
    let mut bound = BTreeMap::new();
    let mut columns = None;
    let mut queryable_columns = None;
    let mut replica = Replica::Default;
    let mut log = LogMode::Full;
    let mut compaction = false;

    for p in params {
        let name: &str = &p.name;
        match classify(name) {
            ParamKind::Shape | ParamKind::Secret => {}
            ParamKind::PassThrough | ParamKind::Other => continue,
        }
        if p.name_has_encoded_letters() {
            return Err(ShapeQueryError::EncodedName(name.to_string()));
        }
        if seen.contains(&name) {
            return Err(ShapeQueryError::Duplicate(name.to_string()));
        }
        seen.push(name);
        let value: &str = &p.value;
        match name {
            "table" => {
                table = Some(identifier::parse_relation(value).map_err(|e| invalid(name, e))?)
            }
            "where" => where_clause = Some(value.to_string()),
            "columns" => {
                columns = Some(identifier::parse_columns(value).map_err(|e| invalid(name, e))?)
            }
            "queryable_columns" => {
                queryable_columns =
                    Some(identifier::parse_columns(value).map_err(|e| invalid(name, e))?)
            }
            "replica" => {
                replica = parse_replica(value)
                    .ok_or_else(|| invalid(name, "expected 'default' or 'full'"))?
            }
            "log" => {
                log = parse_log(value)
                    .ok_or_else(|| invalid(name, "expected 'full' or 'changes_only'"))?
            }
            "experimental_compaction" => {
                compaction =
                    parse_bool(value).ok_or_else(|| invalid(name, "expected 'true' or 'false'"))?
            }
            "secret" | "api_secret" => {}
            _ => match param_index(name) {
                Some(n) => {
                    bound.insert(n, value.to_string());
                }
                None => {
                    return Err(invalid(
                        name,
                        "shape parameters are table, where, params[n] (n = 1, 2, ...), columns, replica, log",
                    ))
                }
            },
        }
    }

    Ok(Shape {
        relation: table.ok_or(ShapeQueryError::MissingTable)?,
        where_clause,
        params: bound,
        columns,
        queryable_columns,
        replica,
        log,
        compaction,
        subsets: false,
    })
}

fn bad_field(field: &str, reason: impl fmt::Display) -> ClaimError {
    ClaimError::BadField {
        field: field.to_string(),
        reason: reason.to_string(),
    }
}

fn opt_str<'a>(
    obj: &'a serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ClaimError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad_field(field, "expected a string or null")),
    }
}

/// A name as Electric's gatekeeper writes it into a claim: the raw name of the schema, table
/// or column (no quoting, no case folding, no `schema.table` splitting: a table called
/// `GkItems` is `"GkItems"`, one called `gk.split` is `"gk.split"`).
fn raw_name(field: &str, name: &str) -> Result<String, ClaimError> {
    if name.is_empty() {
        return Err(bad_field(field, IdentifierError::Empty));
    }
    if name.chars().count() > identifier::MAX_IDENTIFIER_CHARS {
        return Err(bad_field(field, IdentifierError::TooLong));
    }
    if name.contains('\0') {
        return Err(bad_field(field, "a name cannot contain NUL"));
    }
    Ok(name.to_string())
}

fn claim_columns(
    obj: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<Vec<String>>, ClaimError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        // the gatekeeper's `columns` parameter form: raw names split on ',' (empty pieces
        // dropped, nothing trimmed), as `Electric.Phoenix.shape_from_params` splits it
        Some(Value::String(s)) => {
            let mut cols = s
                .split(',')
                .filter(|c| !c.is_empty())
                .map(|c| raw_name(field, c))
                .collect::<Result<Vec<_>, _>>()?;
            if cols.is_empty() {
                return Err(bad_field(field, IdentifierError::Empty));
            }
            cols.sort();
            cols.dedup();
            Ok(Some(cols))
        }
        Some(Value::Array(items)) => {
            let mut cols = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => raw_name(field, s),
                    _ => Err(bad_field(field, "expected an array of strings")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if cols.is_empty() {
                return Err(bad_field(field, IdentifierError::Empty));
            }
            cols.sort();
            cols.dedup();
            Ok(Some(cols))
        }
        Some(_) => Err(bad_field(
            field,
            "expected an array of strings, a comma-separated string or null",
        )),
    }
}

fn claim_param_value(v: &Value) -> Result<String, ClaimError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(bad_field("params", "values must be strings")),
    }
}

fn claim_params(obj: &serde_json::Map<String, Value>) -> Result<BTreeMap<u32, String>, ClaimError> {
    let mut out = BTreeMap::new();
    match obj.get("params") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                let n = u32::try_from(i + 1).map_err(|_| bad_field("params", "too many"))?;
                out.insert(n, claim_param_value(v)?);
            }
        }
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let n = param_index(&format!("params[{k}]"))
                    .ok_or_else(|| bad_field("params", format!("key '{k}' is not 1, 2, ...")))?;
                out.insert(n, claim_param_value(v)?);
            }
        }
        Some(_) => return Err(bad_field("params", "expected an object, an array or null")),
    }
    Ok(out)
}

const CLAIM_FIELDS: &[&str] = &[
    "table",
    "namespace",
    "schema",
    "where",
    "params",
    "columns",
    "queryable_columns",
    "replica",
    "log",
    "experimental_compaction",
    crate::subset::CLAIM_FIELD,
];

/// Reads a shape claim: `{"table": "items", "namespace": null, "where": null, "columns": null}`.
/// `table`, `namespace` and `columns` hold **raw names**, exactly as Electric's gatekeeper
/// writes them (it quotes names only in the URL it gives the client); the request's `table`
/// and `columns` are read as Electric's server reads them (quoted identifiers keep their case,
/// unquoted ones fold to lower case, `schema.table` splits at the dot outside quotes). So a
/// token for `GkItems` matches `table="GkItems"`, not `table=gkitems`.
/// as Electric's gatekeeper mints it, plus `params`, `replica`, `log`, `queryable_columns`,
/// `experimental_compaction`. `columns` may be an array or a comma-separated string, `params`
/// an object `{"1": ..}` or an array. Unknown fields are refused: a restriction this code did
/// not understand must not be silently dropped.
pub fn shape_from_claim(claim_name: &str, claims: &Value) -> Result<Shape, ClaimError> {
    let value = claims
        .get(claim_name)
        .ok_or_else(|| ClaimError::Missing(claim_name.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ClaimError::NotObject(claim_name.to_string()))?;
    if let Some(unknown) = obj.keys().find(|k| !CLAIM_FIELDS.contains(&k.as_str())) {
        return Err(bad_field(unknown, "unknown shape field"));
    }
    let table = opt_str(obj, "table")?.ok_or(ClaimError::MissingTable)?;
    let namespace = match opt_str(obj, "namespace")? {
        Some(ns) => Some(ns),
        None => opt_str(obj, "schema")?,
    };
    // raw names, as Electric's gatekeeper mints them; no namespace is Postgres's `public`
    let relation = Relation {
        schema: raw_name("namespace", namespace.unwrap_or(identifier::DEFAULT_SCHEMA))?,
        name: raw_name("table", table)?,
    };
    let replica = match opt_str(obj, "replica")? {
        None => Replica::Default,
        Some(v) => {
            parse_replica(v).ok_or_else(|| bad_field("replica", "expected 'default' or 'full'"))?
        }
    };
    let log = match opt_str(obj, "log")? {
        None => LogMode::Full,
        Some(v) => {
            parse_log(v).ok_or_else(|| bad_field("log", "expected 'full' or 'changes_only'"))?
        }
    };
    let compaction = match obj.get("experimental_compaction") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => parse_bool(s)
            .ok_or_else(|| bad_field("experimental_compaction", "expected a boolean"))?,
        Some(_) => return Err(bad_field("experimental_compaction", "expected a boolean")),
    };
    Ok(Shape {
        relation,
        where_clause: opt_str(obj, "where")?.map(str::to_string),
        params: claim_params(obj)?,
        columns: claim_columns(obj, "columns")?,
        queryable_columns: claim_columns(obj, "queryable_columns")?,
        replica,
        log,
        compaction,
        subsets: crate::subset::claim_subsets(obj)?,
    })
}

/// Checks that the request's shape is exactly the one the token allows.
pub fn compare(allowed: &Shape, requested: &Shape) -> Result<(), Mismatch> {
    if allowed.relation != requested.relation {
        return Err(Mismatch("table"));
    }
    if allowed.where_clause != requested.where_clause {
        return Err(Mismatch("where"));
    }
    if allowed.params != requested.params {
        return Err(Mismatch("params"));
    }
    if allowed.columns != requested.columns {
        return Err(Mismatch("columns"));
    }
    if allowed.queryable_columns != requested.queryable_columns {
        return Err(Mismatch("queryable_columns"));
    }
    if allowed.replica != requested.replica {
        return Err(Mismatch("replica"));
    }
    if allowed.log != requested.log {
        return Err(Mismatch("log"));
    }
    if allowed.compaction != requested.compaction {
        return Err(Mismatch("experimental_compaction"));
    }
    Ok(())
}

/// Rebuilds the query string to forward upstream: every parameter as the client sent it
/// except Electric secrets, then `secret=<value>` when the proxy holds one.
pub fn upstream_query(params: &[QueryParam<'_>], secret: Option<&str>) -> String {
    let mut out = String::new();
    for p in params {
        if classify(&p.name) == ParamKind::Secret {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(p.raw);
    }
    if let Some(s) = secret {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str("secret=");
        out.push_str(&crate::query::encode_component(s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{encode_component, parse_query};
    use proptest::prelude::*;
    use serde_json::json;

    fn req(q: &str) -> Result<Shape, ShapeQueryError> {
        shape_from_query(&parse_query(q).unwrap())
    }

    fn claim(v: Value) -> Result<Shape, ClaimError> {
        shape_from_claim("shape", &json!({ "shape": v }))
    }

    #[test]
    fn gatekeeper_claim_matches_plain_request() {
        let c = claim(json!({"namespace": null, "table": "items", "where": null, "columns": null}))
            .unwrap();
        for q in [
            "table=items&offset=-1",
            "table=public.items&offset=-1&live=true&handle=1-2&cursor=5",
            "table=%22items%22",
            "table=ITEMS&replica=default&log=full",
            "offset=-1&table=%22public%22.items&subset__where=x&cache-buster=1&custom=1",
        ] {
            assert_eq!(compare(&c, &req(q).unwrap()), Ok(()), "{q}");
        }
    }

    #[test]
    fn every_shape_field_is_bound() {
        let c = claim(
            json!({"table": "items", "where": "user_id = $1", "params": {"1": "42"},
            "columns": ["id", "Title"], "replica": "full"}),
        )
        .unwrap();
        // raw claim names: `Title` is the quoted identifier, `id` any spelling that folds to it
        let ok = "table=items&where=user_id+%3D+%241&params%5B1%5D=42&columns=%22Title%22,ID&replica=full";
        assert_eq!(compare(&c, &req(ok).unwrap()), Ok(()));
        let cases = [
            ("table=other&where=user_id+%3D+%241&params[1]=42&columns=id,%22Title%22&replica=full", "table"),
            ("table=items&where=true&params[1]=42&columns=id,%22Title%22&replica=full", "where"),
            ("table=items&params[1]=42&columns=id,%22Title%22&replica=full", "where"),
            ("table=items&where=user_id+%3D+%241&params[1]=43&columns=id,%22Title%22&replica=full", "params"),
            ("table=items&where=user_id+%3D+%241&params[1]=42&params[2]=1&columns=id,%22Title%22&replica=full", "params"),
            ("table=items&where=user_id+%3D+%241&columns=id,%22Title%22&replica=full", "params"),
            ("table=items&where=user_id+%3D+%241&params[1]=42&columns=id&replica=full", "columns"),
            ("table=items&where=user_id+%3D+%241&params[1]=42&columns=id,Title&replica=full", "columns"),
            ("table=items&where=user_id+%3D+%241&params[1]=42&replica=full", "columns"),
            ("table=items&where=user_id+%3D+%241&params[1]=42&columns=id,%22Title%22", "replica"),
            ("table=items&where=user_id+%3D+%241&params[1]=42&columns=id,%22Title%22&replica=full&log=changes_only", "log"),
            ("table=items&where=user_id+%3D+%241&params[1]=42&columns=id,%22Title%22&replica=full&experimental_compaction=true", "experimental_compaction"),
            ("table=items&where=user_id+%3D+%241&params[1]=42&columns=id,%22Title%22&replica=full&queryable_columns=id", "queryable_columns"),
        ];
        for (q, field) in cases {
            assert_eq!(compare(&c, &req(q).unwrap()), Err(Mismatch(field)), "{q}");
        }
    }

    #[test]
    fn empty_where_is_not_absent_where() {
        let c = claim(json!({"table": "items", "where": null})).unwrap();
        assert_eq!(
            compare(&c, &req("table=items&where=").unwrap()),
            Err(Mismatch("where"))
        );
    }

    #[test]
    fn claims_hold_raw_names_as_electric_mints_them() {
        let ok = |c: &Shape, q: &str| assert_eq!(compare(c, &req(q).unwrap()), Ok(()), "{q}");
        let no = |c: &Shape, q: &str, what| {
            assert_eq!(compare(c, &req(q).unwrap()), Err(Mismatch(what)), "{q}")
        };
        // mixed case: the claim's raw `GkItems` is the quoted identifier in the request
        let c = claim(json!({"table": "GkItems", "namespace": null})).unwrap();
        assert_eq!(
            (c.relation.schema.as_str(), c.relation.name.as_str()),
            ("public", "GkItems")
        );
        ok(&c, "table=%22GkItems%22");
        ok(&c, "table=public.%22GkItems%22");
        no(&c, "table=GkItems", "table");
        no(&c, "table=gkitems", "table");
        // a dot is part of the name, not a schema separator
        let c = claim(json!({"table": "gk.split", "namespace": null})).unwrap();
        ok(&c, "table=%22gk.split%22");
        no(&c, "table=gk.split", "table");
        // the raw namespace, with case, spaces and quotes
        let c = claim(json!({"table": "My \"T\"", "namespace": "App Schema"})).unwrap();
        ok(&c, "table=%22App%20Schema%22.%22My%20%22%22T%22%22%22");
        no(&c, "table=app_schema.%22My%20%22%22T%22%22%22", "table");
        let c = claim(json!({"table": "items", "namespace": "App"})).unwrap();
        ok(&c, "table=%22App%22.items");
        no(&c, "table=App.items", "table");
        // columns: raw names; `ID` is the quoted `"ID"`, never the unquoted (folded) `id`
        let c = claim(json!({"table": "t", "columns": ["ID", "a,b", "x y"]})).unwrap();
        ok(&c, "table=t&columns=%22ID%22,%22a,b%22,%22x%20y%22");
        no(&c, "table=t&columns=ID,%22a,b%22,%22x%20y%22", "columns");
        let c = claim(json!({"table": "t", "columns": ["id"]})).unwrap();
        ok(&c, "table=t&columns=ID");
        ok(&c, "table=t&columns=%22id%22");
        // names a request cannot hold are refused in the claim too
        assert!(claim(json!({"table": ""})).is_err());
        assert!(claim(json!({"table": "t", "namespace": ""})).is_err());
        assert!(claim(json!({"table": "x".repeat(64)})).is_err());
        assert!(claim(json!({"table": "t", "columns": [""]})).is_err());
    }

    #[test]
    fn column_forms() {
        let arr = claim(json!({"table": "t", "columns": ["b", "a"]})).unwrap();
        let s = claim(json!({"table": "t", "columns": "a,b"})).unwrap();
        assert_eq!(arr, s);
        for q in [
            "table=t&columns=a,b",
            "table=t&columns=b,a",
            "table=t&columns=%22a%22,B",
            "table=t&columns=a%2Cb",
        ] {
            assert_eq!(compare(&arr, &req(q).unwrap()), Ok(()), "{q}");
        }
        assert!(matches!(
            req("table=t&columns=a,,b"),
            Err(ShapeQueryError::Invalid { .. })
        ));
        assert!(matches!(
            req("table=t&columns="),
            Err(ShapeQueryError::Invalid { .. })
        ));
        assert!(matches!(
            req("table=t&columns=a%20b"),
            Err(ShapeQueryError::Invalid { .. })
        ));
    }

    #[test]
    fn params_forms() {
        let obj =
            claim(json!({"table": "t", "where": "a=$1 and b=$2", "params": {"1": "x", "2": 7}}))
                .unwrap();
        let arr =
            claim(json!({"table": "t", "where": "a=$1 and b=$2", "params": ["x", "7"]})).unwrap();
        assert_eq!(obj, arr);
        let q = "table=t&where=a%3D%241+and+b%3D%242&params%5B2%5D=7&params[1]=x";
        assert_eq!(compare(&obj, &req(q).unwrap()), Ok(()));
        for bad in [
            "table=t&params[0]=x",
            "table=t&params[01]=x",
            "table=t&params=x",
            "table=t&params[a]=x",
            "table=t&params[1][x]=y",
            "table=t&table[x]=y",
        ] {
            assert!(
                matches!(req(bad), Err(ShapeQueryError::Invalid { .. })),
                "{bad}"
            );
        }
        assert!(claim(json!({"table": "t", "params": {"0": "x"}})).is_err());
        assert!(claim(json!({"table": "t", "params": {"1": {"x": 1}}})).is_err());
    }

    #[test]
    fn duplicates_and_smuggling_are_refused() {
        assert_eq!(
            req("table=a&table=b"),
            Err(ShapeQueryError::Duplicate("table".into()))
        );
        assert_eq!(
            req("table=a&%74able=b"),
            Err(ShapeQueryError::EncodedName("table".into()))
        );
        assert_eq!(
            req("%74able=a"),
            Err(ShapeQueryError::EncodedName("table".into()))
        );
        assert_eq!(
            req("table=a&wh%65re=x"),
            Err(ShapeQueryError::EncodedName("where".into()))
        );
        assert_eq!(
            req("table=a&params[1]=x&params%5B1%5D=y"),
            Err(ShapeQueryError::Duplicate("params[1]".into()))
        );
        assert_eq!(
            req("table=a&secret=1&secret=2"),
            Err(ShapeQueryError::Duplicate("secret".into()))
        );
        assert_eq!(
            req("table=a&s%65cret=1"),
            Err(ShapeQueryError::EncodedName("secret".into()))
        );
        // duplicated pagination params are Electric's business
        assert!(req("table=a&offset=1&offset=2").is_ok());
        // a double-encoded name is not a shape parameter for anyone (Plug decodes once)
        assert!(req("table=a&%2574able=b").is_ok());
        assert_eq!(req("offset=-1"), Err(ShapeQueryError::MissingTable));
    }

    #[test]
    fn bad_enum_values() {
        assert!(matches!(
            req("table=t&replica=partial"),
            Err(ShapeQueryError::Invalid { .. })
        ));
        assert!(matches!(
            req("table=t&log=x"),
            Err(ShapeQueryError::Invalid { .. })
        ));
        assert!(matches!(
            req("table=t&experimental_compaction=yes"),
            Err(ShapeQueryError::Invalid { .. })
        ));
    }

    #[test]
    fn claim_errors() {
        assert_eq!(
            shape_from_claim("shape", &json!({"sub": "x"})),
            Err(ClaimError::Missing("shape".into()))
        );
        assert_eq!(
            shape_from_claim("shape", &json!({"shape": "items"})),
            Err(ClaimError::NotObject("shape".into()))
        );
        assert_eq!(
            shape_from_claim("shape", &json!({"shape": null})),
            Err(ClaimError::NotObject("shape".into()))
        );
        assert_eq!(claim(json!({"where": null})), Err(ClaimError::MissingTable));
        assert!(matches!(
            claim(json!({"table": 5})),
            Err(ClaimError::BadField { .. })
        ));
        assert!(matches!(
            claim(json!({"table": "t", "columns": [1]})),
            Err(ClaimError::BadField { .. })
        ));
        assert!(matches!(
            claim(json!({"table": "t", "columns": []})),
            Err(ClaimError::BadField { .. })
        ));
        assert!(matches!(
            claim(json!({"table": "t", "subset": "x"})),
            Err(ClaimError::BadField { .. })
        ));
        // a dot is part of a raw name, not a separator
        assert_eq!(
            claim(json!({"table": "a.b.c"})).unwrap().relation.name,
            "a.b.c"
        );
    }

    #[test]
    fn upstream_query_strips_and_injects_secret() {
        let p = parse_query("table=items&secret=client&offset=-1&api_secret=x&where=a+b").unwrap();
        assert_eq!(upstream_query(&p, None), "table=items&offset=-1&where=a+b");
        assert_eq!(
            upstream_query(&p, Some("s3cr&t")),
            "table=items&offset=-1&where=a+b&secret=s3cr%26t"
        );
        assert_eq!(upstream_query(&[], Some("x")), "secret=x");
    }

    fn arb_shape() -> impl Strategy<Value = (String, Option<String>, Vec<String>, Vec<String>, bool)>
    {
        (
            "[a-z_][a-z0-9_]{0,10}",
            proptest::option::of("\\PC{0,20}"),
            proptest::collection::vec("\\PC{0,6}", 0..4),
            proptest::collection::vec("[A-Za-z_][A-Za-z0-9_]{0,8}", 0..4),
            any::<bool>(),
        )
    }

    proptest! {
        #[test]
        fn claim_and_request_of_the_same_shape_agree((table, where_clause, params, cols, full) in arb_shape()) {
            let mut c = serde_json::Map::new();
            c.insert("table".into(), json!(table));
            c.insert("where".into(), json!(where_clause));
            c.insert("params".into(), json!(params));
            // the claim holds raw names; the request quotes them as Electric's client does
            if !cols.is_empty() { c.insert("columns".into(), json!(cols)); }
            if full { c.insert("replica".into(), json!("full")); }
            let allowed = claim(Value::Object(c)).unwrap();

            let mut q = vec![format!("table={}", encode_component(&table))];
            if let Some(w) = &where_clause { q.push(format!("where={}", encode_component(w))); }
            for (i, p) in params.iter().enumerate().rev() { q.push(format!("params%5B{}%5D={}", i + 1, encode_component(p))); }
            if !cols.is_empty() {
                let mut rev: Vec<String> = cols.iter().map(|s| identifier::quote(s)).collect();
                rev.reverse();
                q.push(format!("columns={}", encode_component(&rev.join(","))));
            }
            if full { q.push("replica=full".into()); }
            q.push("offset=-1".into());
            let requested = req(&q.join("&")).unwrap();
            prop_assert_eq!(compare(&allowed, &requested), Ok(()));

            // changing any bound value breaks the match
            let mut other = requested.clone();
            other.params.insert(99, "x".into());
            prop_assert_eq!(compare(&allowed, &other), Err(Mismatch("params")));
            let mut other = requested.clone();
            other.where_clause = Some(format!("{}!", where_clause.clone().unwrap_or_default()));
            prop_assert_eq!(compare(&allowed, &other), Err(Mismatch("where")));
        }

        #[test]
        fn shape_parsing_never_panics(q in "[a-z%=&0-9A-F\\[\\]\"+.,_]{0,80}") {
            if let Ok(params) = parse_query(&q) { let _ = shape_from_query(&params); }
        }
    }
}
