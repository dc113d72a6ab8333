//! Electric subset snapshots (`subset__where`, `subset__order_by`, `subset__limit`,
//! `subset__offset`, `subset__params`, and the structured `subset__where_expr` /
//! `subset__order_by_expr` the TypeScript client adds), read from a `/v1/shape` query string or
//! from a `POST /v1/shape` JSON body, and checked against what the token grants.
//!
//! Why: a subset filters and orders the rows of a shape, so a subset that names a column can
//! tell its values even when the shape's `columns` hide it (`WHERE salary > 100000 LIMIT 1`).
//! Electric fixed this upstream with `queryable_columns` (advisory GHSA-c82q-v86f-c87f;
//! Electric 1.6.10+), which older servers silently ignore. jwt-shape does not rely on it:
//!
//! - a subset request is refused unless the token's shape claim says `"subsets": true`;
//! - when the token restricts columns (its `queryable_columns`, else its `columns`), every
//!   identifier the subset's `where`/`order_by` refers to must be one of them. The expressions
//!   are read by a small, conservative SQL reader ([`check_sql`]) that follows PostgreSQL's
//!   lexical rules (quoted identifiers verbatim, unquoted ones folded to lower case, standard
//!   and `E''` strings, numbers, `$n`) and a narrow grammar: column references, literals, the
//!   usual operators, `AND OR NOT IS [NOT] NULL/TRUE/FALSE/DISTINCT FROM`, `[NOT] LIKE/ILIKE/IN/
//!   BETWEEN`, `ANY(...)`, `ARRAY[...]`, a fixed list of functions, `::type` casts, `COLLATE`,
//!   and in `order_by` `ASC/DESC NULLS FIRST/LAST`. Anything it does not understand (comments,
//!   dollar quotes, qualified names, subqueries, `CASE`, unknown functions, ...) is refused:
//!   failing closed costs a client a rewrite, failing open would leak a column.
//! - a POST body may only hold subset keys: Electric merges every other key of the body into
//!   the request's parameters, so a body `{"table": ..}` or `{"columns": ..}` would redefine
//!   the shape behind the proxy's back.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::identifier::MAX_IDENTIFIER_CHARS;
use crate::query::QueryParam;
use crate::shape::{ClaimError, Shape};

/// The claim field that allows subset requests (`"subsets": true` in the shape claim).
pub const CLAIM_FIELD: &str = "subsets";

/// Subset parameters, as they are named inside the subset (`subset__<name>` in a query, `<name>`
/// in a POST body). Electric's server reads the first five; the TypeScript client also sends
/// the structured `where_expr` / `order_by_expr` next to their compiled SQL.
pub const FIELDS: &[&str] = &[
    "where",
    "order_by",
    "limit",
    "offset",
    "params",
    "where_expr",
    "order_by_expr",
];

/// The query-string prefix of subset parameters.
pub const QUERY_PREFIX: &str = "subset__";

/// Deepest nesting of parentheses, brackets or structured expressions accepted.
pub const MAX_DEPTH: usize = 64;

/// Functions a subset expression may call: the ones Electric's evaluator knows (any other is
/// refused by Electric too) and the ones the TypeScript client compiles `whereExpr` into.
pub const FUNCTIONS: &[&str] = &[
    "array_append",
    "array_cat",
    "array_ndims",
    "array_prepend",
    "bool",
    "coalesce",
    "concat",
    "date",
    "float4",
    "float8",
    "greatest",
    "ilike",
    "int2",
    "int4",
    "int8",
    "interval",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "least",
    "length",
    "like",
    "lower",
    "numeric",
    "text",
    "time",
    "timestamp",
    "timestamptz",
    "timezone",
    "upper",
    "uuid",
];

/// PostgreSQL's reserved key words (and the type/function-name ones that can never be a column
/// reference). A word of this list is never read as a column; those the grammar here does not
/// use are refused.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// Operators that may stand before an operand.
const PREFIX_OPS: &[&str] = &["-", "+", "~", "@", "|/", "||/"];

/// Words that may follow a type name after `::` (`double precision`, `character varying`,
/// `timestamp with time zone`).
const TYPE_WORDS: &[&str] = &["precision", "varying", "with", "without", "time", "zone"];

/// Function names of the TypeScript client's structured `whereExpr`.
const EXPR_FUNCTIONS: &[&str] = &[
    "eq",
    "gt",
    "gte",
    "lt",
    "lte",
    "and",
    "or",
    "not",
    "in",
    "like",
    "ilike",
    "isNull",
    "isUndefined",
    "upper",
    "lower",
    "length",
    "concat",
    "coalesce",
];

// ------------------------------------------------------------------------------------ claim

/// Reads the claim's `subsets` field: absent or null → `false`, a boolean as is.
pub fn claim_subsets(obj: &Map<String, Value>) -> Result<bool, ClaimError> {
    match obj.get(CLAIM_FIELD) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ClaimError::BadField {
            field: CLAIM_FIELD.to_string(),
            reason: "expected a boolean".to_string(),
        }),
    }
}

/// What a token lets subset requests do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsetGrant {
    /// The claim says `"subsets": true`.
    pub allowed: bool,
    /// The columns a subset may refer to (canonical names): the claim's `queryable_columns`
    /// (Electric's own allow-list for subsets), else its `columns`; `None` when the token
    /// restricts neither (then every column of the shape is synced anyway).
    pub columns: Option<Vec<String>>,
}

impl SubsetGrant {
    /// The grant of a token's (parsed) shape claim.
    pub fn of(shape: &Shape) -> SubsetGrant {
        SubsetGrant {
            allowed: shape.subsets,
            columns: shape
                .queryable_columns
                .clone()
                .or_else(|| shape.columns.clone()),
        }
    }

    fn grants(&self, column: &str) -> bool {
        self.columns
            .as_ref()
            .is_none_or(|cols| cols.iter().any(|c| c == column))
    }
}

// ------------------------------------------------------------------------- subset requests

/// The subset parts of one request (from its query string, its POST body, or both).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Subset {
    /// Some subset parameter is present (even `limit` alone makes a subset snapshot).
    pub present: bool,
    /// `where` clauses to check (the query's and the body's).
    pub where_clauses: Vec<String>,
    pub order_bys: Vec<String>,
    pub where_exprs: Vec<Value>,
    pub order_by_exprs: Vec<Value>,
}

/// Why subset parameters were refused as malformed (a 400).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubsetError {
    /// A subset parameter given more than once.
    Duplicate(String),
    /// A subset parameter whose name is percent-encoded.
    EncodedName(String),
    /// `subset__<x>` with an `<x>` Electric does not define, or the `subset[...]` form.
    Unknown(String),
    /// A value of the wrong form.
    Invalid { param: String, reason: String },
    /// The POST body is not JSON.
    BodyNotJson(String),
    /// The POST body is JSON but not an object.
    BodyNotObject,
    /// The POST body holds a key that is not a subset parameter.
    BodyKey(String),
}

impl fmt::Display for SubsetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubsetError::Duplicate(p) => write!(f, "parameter '{p}' is given more than once"),
            SubsetError::EncodedName(p) => {
                write!(f, "parameter name '{p}' must not be percent-encoded")
            }
            SubsetError::Unknown(p) => write!(
                f,
                "unknown subset parameter '{p}': subsets are subset__where, subset__params, \
                 subset__order_by, subset__limit, subset__offset (and subset__where_expr, \
                 subset__order_by_expr)"
            ),
            SubsetError::Invalid { param, reason } => {
                write!(f, "invalid parameter '{param}': {reason}")
            }
            SubsetError::BodyNotJson(why) => write!(f, "request body is not valid JSON: {why}"),
            SubsetError::BodyNotObject => f.write_str("request body must be a JSON object"),
            SubsetError::BodyKey(k) => write!(
                f,
                "request body key '{k}' is not a subset parameter (the body may hold where, \
                 params, order_by, limit, offset, where_expr, order_by_expr; the shape is \
                 defined by the query string)"
            ),
        }
    }
}

impl std::error::Error for SubsetError {}

/// Why a well-formed subset request was refused (a 403).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubsetRefusal {
    /// The token's shape claim does not say `"subsets": true`.
    NotAllowed,
    /// The subset refers to a column the token does not grant.
    Column { param: &'static str, column: String },
    /// The subset expression is beyond what the reader understands (fail closed).
    NotUnderstood {
        param: &'static str,
        reason: SqlError,
    },
}

impl SubsetRefusal {
    /// A short reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SubsetRefusal::NotAllowed => "subset_not_allowed",
            SubsetRefusal::Column { .. } => "subset_column",
            SubsetRefusal::NotUnderstood { .. } => "subset_unsupported",
        }
    }
}

impl fmt::Display for SubsetRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubsetRefusal::NotAllowed => f.write_str("token does not allow subset requests"),
            SubsetRefusal::Column { param, column } => write!(
                f,
                "{param} refers to column '{}', which the token does not grant",
                printable(column)
            ),
            SubsetRefusal::NotUnderstood { param, reason } => write!(
                f,
                "{param} is not accepted: {reason} (subsets may use columns, literals, $n, \
                 operators, AND/OR/NOT, IS, LIKE, IN, BETWEEN, ANY, ARRAY, casts and a few \
                 functions)"
            ),
        }
    }
}

/// A short, log-safe rendering of client input.
fn printable(s: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = s.chars().take(MAX).filter(|c| !c.is_control()).collect();
    if s.chars().count() > MAX {
        out.push('…');
    }
    out
}

fn invalid(param: &str, reason: impl fmt::Display) -> SubsetError {
    SubsetError::Invalid {
        param: param.to_string(),
        reason: reason.to_string(),
    }
}

/// `n` of `params[n]`-style keys: a positive decimal without leading zeros.
fn positive_index(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('0') && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit())
}

/// A count (`limit`, `offset`) written as decimal digits, at most 18 of them.
fn parse_count(param: &str, v: &str, min: u64) -> Result<u64, SubsetError> {
    if v.is_empty() || v.len() > 18 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(param, "expected a non-negative integer"));
    }
    let n: u64 = v
        .parse()
        .map_err(|_| invalid(param, "expected a non-negative integer"))?;
    if n < min {
        return Err(invalid(param, format!("must be at least {min}")));
    }
    Ok(n)
}

fn min_of(field: &str) -> u64 {
    // Electric: limit > 0, offset >= 0
    if field == "limit" {
        1
    } else {
        0
    }
}

/// Checks a `params` object: keys `1`, `2`, ...; values strings, numbers or booleans.
fn check_params_object(param: &str, map: &Map<String, Value>) -> Result<(), SubsetError> {
    for (k, v) in map {
        if !positive_index(k) {
            return Err(invalid(
                param,
                format!("key '{}' is not 1, 2, ...", printable(k)),
            ));
        }
        match v {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => {}
            _ => return Err(invalid(param, "values must be strings or numbers")),
        }
    }
    Ok(())
}

fn parse_json(param: &str, text: &str) -> Result<Value, SubsetError> {
    serde_json::from_str(text).map_err(|e| invalid(param, format!("not valid JSON ({e})")))
}

/// Reads the subset parameters of a query string (`subset__*`). Every other parameter is left
/// to the shape code. Refuses duplicated and percent-encoded names, unknown `subset__<x>`
/// names and Plug's nested form `subset[where]=...` (which Electric would read as a subset too).
pub fn subset_from_query(params: &[QueryParam<'_>]) -> Result<Subset, SubsetError> {
    let mut out = Subset::default();
    let mut seen: Vec<&str> = Vec::new();
    let mut params_forms = 0usize;
    for p in params {
        let name: &str = &p.name;
        let base = name.split('[').next().unwrap_or(name);
        if base == "subset" {
            return Err(SubsetError::Unknown(printable(name)));
        }
        let Some(field) = base.strip_prefix(QUERY_PREFIX) else {
            continue;
        };
        if p.name_has_encoded_letters() {
            return Err(SubsetError::EncodedName(printable(name)));
        }
        if !FIELDS.contains(&field) {
            return Err(SubsetError::Unknown(printable(name)));
        }
        if seen.contains(&name) {
            return Err(SubsetError::Duplicate(printable(name)));
        }
        seen.push(name);
        out.present = true;
        let value: &str = &p.value;
        if name != base {
            // only `subset__params[n]` (deepObject) has brackets
            let index = name
                .strip_prefix("subset__params[")
                .and_then(|s| s.strip_suffix(']'));
            match index {
                Some(n) if positive_index(n) => {
                    params_forms |= 2;
                    if params_forms == 3 {
                        return Err(SubsetError::Duplicate("subset__params".into()));
                    }
                    continue;
                }
                _ => {
                    return Err(invalid(
                        name,
                        "only subset__params[n] (n = 1, 2, ...) has brackets",
                    ))
                }
            }
        }
        match field {
            "where" => out.where_clauses.push(value.to_string()),
            "order_by" => out.order_bys.push(value.to_string()),
            "limit" | "offset" => {
                parse_count(name, value, min_of(field))?;
            }
            "params" => {
                params_forms |= 1;
                if params_forms == 3 {
                    return Err(SubsetError::Duplicate("subset__params".into()));
                }
                match parse_json(name, value)? {
                    Value::Object(map) => check_params_object(name, &map)?,
                    _ => return Err(invalid(name, "expected a JSON object {\"1\": ...}")),
                }
            }
            "where_expr" => out.where_exprs.push(parse_json(name, value)?),
            "order_by_expr" => out.order_by_exprs.push(parse_json(name, value)?),
            _ => return Err(SubsetError::Unknown(printable(name))),
        }
    }
    Ok(out)
}

/// A JSON object whose keys were checked for duplicates while it was read (serde_json keeps
/// the last of duplicated keys, as Electric's Jason does; refusing them avoids any doubt).
struct UniqueObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<UniqueObject, D::Error> {
        struct V;
        impl<'v> Visitor<'v> for V {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'v>>(self, mut map: A) -> Result<UniqueObject, A::Error> {
                let mut out: Vec<(String, Value)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(serde::de::Error::custom(format!(
                            "key '{}' is given more than once",
                            printable(&k)
                        )));
                    }
                    out.push((k, v));
                }
                Ok(UniqueObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads a `POST /v1/shape` body as Electric does (an empty body is no body; anything else
/// must be a JSON object) and keeps only what a subset may say. Every key must be a subset
/// parameter: Electric merges the others into the shape's parameters.
pub fn subset_from_body(body: &[u8]) -> Result<Subset, SubsetError> {
    let mut out = Subset::default();
    if body.is_empty() {
        return Ok(out);
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| SubsetError::BodyNotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(SubsetError::BodyNotObject);
    }
    let UniqueObject(entries) =
        serde_json::from_slice(body).map_err(|e| SubsetError::BodyNotJson(e.to_string()))?;
    for (key, v) in entries {
        if !FIELDS.contains(&key.as_str()) {
            return Err(SubsetError::BodyKey(printable(&key)));
        }
        out.present = true;
        let field = key.as_str();
        match (field, v) {
            (_, Value::Null) => {}
            ("where", Value::String(s)) => out.where_clauses.push(s),
            ("order_by", Value::String(s)) => out.order_bys.push(s),
            ("where" | "order_by", _) => return Err(invalid(field, "expected a string")),
            ("limit" | "offset", Value::String(s)) => {
                parse_count(field, &s, min_of(field))?;
            }
            ("limit" | "offset", Value::Number(n)) => {
                let n = n
                    .as_u64()
                    .ok_or_else(|| invalid(field, "expected a non-negative integer"))?;
                if n < min_of(field) {
                    return Err(invalid(
                        field,
                        format!("must be at least {}", min_of(field)),
                    ));
                }
            }
            ("limit" | "offset", _) => {
                return Err(invalid(field, "expected a non-negative integer"))
            }
            ("params", Value::Object(map)) => check_params_object(field, &map)?,
            ("params", Value::String(s)) => match parse_json(field, &s)? {
                Value::Object(map) => check_params_object(field, &map)?,
                _ => return Err(invalid(field, "expected a JSON object {\"1\": ...}")),
            },
            ("params", _) => return Err(invalid(field, "expected an object {\"1\": ...}")),
            // the structured forms: as sent (the TS client) or as JSON text
            ("where_expr", Value::String(s)) => out.where_exprs.push(parse_json(field, &s)?),
            ("where_expr", other) => out.where_exprs.push(other),
            ("order_by_expr", Value::String(s)) => out.order_by_exprs.push(parse_json(field, &s)?),
            ("order_by_expr", other) => out.order_by_exprs.push(other),
            _ => return Err(SubsetError::BodyKey(printable(field))),
        }
    }
    Ok(out)
}

/// Checks a subset request against the token's grant.
pub fn check(grant: &SubsetGrant, subset: &Subset) -> Result<(), SubsetRefusal> {
    if !subset.present {
        return Ok(());
    }
    if !grant.allowed {
        return Err(SubsetRefusal::NotAllowed);
    }
    if grant.columns.is_none() {
        return Ok(());
    }
    let refuse = |param: &'static str| {
        move |e: SqlRefusal| match e {
            SqlRefusal::Column(column) => SubsetRefusal::Column { param, column },
            SqlRefusal::NotUnderstood(reason) => SubsetRefusal::NotUnderstood { param, reason },
        }
    };
    for w in &subset.where_clauses {
        check_sql(w, Mode::Where, &|c: &str| grant.grants(c)).map_err(refuse("subset where"))?;
    }
    for o in &subset.order_bys {
        check_sql(o, Mode::OrderBy, &|c: &str| grant.grants(c))
            .map_err(refuse("subset order_by"))?;
    }
    for w in &subset.where_exprs {
        check_where_expr(w, &|c: &str| grant.grants(c), 0).map_err(refuse("subset where_expr"))?;
    }
    for o in &subset.order_by_exprs {
        check_order_by_expr(o, &|c: &str| grant.grants(c))
            .map_err(refuse("subset order_by_expr"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------- SQL reading

/// Why an expression was not understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlError {
    /// `--` or `/*`.
    Comment,
    /// `$$ ... $$` or `$tag$ ... $tag$`.
    DollarQuote,
    /// A string or quoted identifier without its closing quote.
    Unterminated(&'static str),
    /// `U&'..'`, `B'..'`, `X'..'`, `N'..'` and other prefixed literals.
    PrefixedLiteral,
    /// `""`.
    EmptyIdentifier,
    /// An identifier longer than Postgres keeps (63 bytes): Postgres would truncate it.
    IdentifierTooLong,
    /// A character outside the grammar (`;`, `.` outside a number, a control character, ...).
    Character(char),
    /// A number followed directly by letters, or otherwise malformed.
    Number,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A key word the grammar does not accept (`SELECT`, `CASE`, `CAST`, ...).
    Keyword(String),
    /// A function outside [`FUNCTIONS`].
    Function(String),
    /// A token where the grammar does not accept it.
    Unexpected(String),
    /// The expression ends in the middle.
    Incomplete,
    /// A structured expression of a form the client does not produce.
    Structure(&'static str),
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlError::Comment => f.write_str("comments are not accepted"),
            SqlError::DollarQuote => f.write_str("dollar-quoted strings are not accepted"),
            SqlError::Unterminated(what) => write!(f, "unterminated {what}"),
            SqlError::PrefixedLiteral => {
                f.write_str("only plain and E'...' string literals are accepted")
            }
            SqlError::EmptyIdentifier => f.write_str("zero-length quoted identifier"),
            SqlError::IdentifierTooLong => {
                write!(f, "identifier longer than {} bytes", MAX_IDENTIFIER_CHARS)
            }
            SqlError::Character(c) => write!(f, "character {c:?} is not accepted"),
            SqlError::Number => f.write_str("malformed number"),
            SqlError::TooDeep => write!(f, "nested deeper than {MAX_DEPTH} levels"),
            SqlError::Keyword(k) => write!(f, "key word {} is not accepted", k.to_uppercase()),
            SqlError::Function(n) => write!(f, "function '{}' is not accepted", printable(n)),
            SqlError::Unexpected(t) => write!(f, "unexpected {}", printable(t)),
            SqlError::Incomplete => f.write_str("the expression is incomplete"),
            SqlError::Structure(what) => write!(f, "structured expression: {what}"),
        }
    }
}

impl std::error::Error for SqlError {}

/// Why [`check_sql`] refused an expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SqlRefusal {
    /// It refers to this column (canonical name), which is not granted.
    Column(String),
    /// It is beyond the reader.
    NotUnderstood(SqlError),
}

impl From<SqlError> for SqlRefusal {
    fn from(e: SqlError) -> SqlRefusal {
        SqlRefusal::NotUnderstood(e)
    }
}

/// One lexical token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// An identifier or key word: canonical name (unquoted ones folded to lower case) and
    /// whether it was quoted (a quoted word is never a key word).
    Ident {
        name: String,
        quoted: bool,
    },
    /// A string literal (its content does not matter here).
    Str,
    Number,
    /// `$n`.
    Param,
    /// An operator (`=`, `<>`, `@>`, `||`, ...).
    Op(String),
    /// `::`.
    Cast,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Ident { name, quoted: true } => format!("\"{name}\""),
            Token::Ident { name, .. } => name.clone(),
            Token::Str => "string".into(),
            Token::Number => "number".into(),
            Token::Param => "parameter".into(),
            Token::Op(o) => format!("'{o}'"),
            Token::Cast => "'::'".into(),
            Token::LParen => "'('".into(),
            Token::RParen => "')'".into(),
            Token::LBracket => "'['".into(),
            Token::RBracket => "']'".into(),
            Token::Comma => "','".into(),
        }
    }

    /// The unquoted word, if this is one.
    fn word(&self) -> Option<&str> {
        match self {
            Token::Ident {
                name,
                quoted: false,
            } => Some(name),
            _ => None,
        }
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn is_ident_char(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == '$'
}

fn is_op_char(c: char) -> bool {
    matches!(
        c,
        '+' | '-'
            | '*'
            | '/'
            | '<'
            | '>'
            | '='
            | '~'
            | '!'
            | '@'
            | '#'
            | '%'
            | '^'
            | '&'
            | '|'
            | '`'
            | '?'
    )
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c')
}

fn ident_len_ok(name: &str) -> Result<(), SqlError> {
    if name.len() > MAX_IDENTIFIER_CHARS {
        Err(SqlError::IdentifierTooLong)
    } else {
        Ok(())
    }
}

/// Splits an expression into tokens with PostgreSQL's lexical rules (standard-conforming
/// strings), refusing what it does not read exactly as Postgres would.
pub fn tokenize(sql: &str) -> Result<Vec<Token>, SqlError> {
    let chars: Vec<char> = sql.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(c) = at(i) {
        if is_space(c) {
            i += 1;
            continue;
        }
        match c {
            '(' => out.push(Token::LParen),
            ')' => out.push(Token::RParen),
            '[' => out.push(Token::LBracket),
            ']' => out.push(Token::RBracket),
            ',' => out.push(Token::Comma),
            ':' => {
                if at(i + 1) != Some(':') {
                    return Err(SqlError::Character(':'));
                }
                out.push(Token::Cast);
                i += 2;
                continue;
            }
            '\'' => {
                i = skip_string(&chars, i + 1, false)?;
                out.push(Token::Str);
                continue;
            }
            '"' => {
                let (name, next) = quoted_ident(&chars, i + 1)?;
                out.push(Token::Ident { name, quoted: true });
                i = next;
                continue;
            }
            '$' => {
                let mut j = i + 1;
                while at(j).is_some_and(|d| d.is_ascii_digit()) {
                    j += 1;
                }
                if j == i + 1 {
                    return Err(SqlError::DollarQuote);
                }
                if at(j).is_some_and(is_ident_char) {
                    return Err(SqlError::Number);
                }
                out.push(Token::Param);
                i = j;
                continue;
            }
            '.' if at(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                i = number(&chars, i)?;
                out.push(Token::Number);
                continue;
            }
            d if d.is_ascii_digit() => {
                i = number(&chars, i)?;
                out.push(Token::Number);
                continue;
            }
            s if is_ident_start(s) => {
                let mut j = i;
                while at(j).is_some_and(is_ident_char) {
                    j += 1;
                }
                let word: String = chars.get(i..j).unwrap_or(&[]).iter().collect();
                let lower = word.to_ascii_lowercase();
                match at(j) {
                    Some('\'') if lower == "e" => {
                        i = skip_string(&chars, j + 1, true)?;
                        out.push(Token::Str);
                        continue;
                    }
                    Some('\'') => return Err(SqlError::PrefixedLiteral),
                    Some('&') if lower == "u" && matches!(at(j + 1), Some('\'' | '"')) => {
                        return Err(SqlError::PrefixedLiteral)
                    }
                    _ => {}
                }
                ident_len_ok(&lower)?;
                out.push(Token::Ident {
                    name: lower,
                    quoted: false,
                });
                i = j;
                continue;
            }
            o if is_op_char(o) => {
                let mut j = i;
                while at(j).is_some_and(is_op_char) {
                    j += 1;
                }
                let op: String = chars.get(i..j).unwrap_or(&[]).iter().collect();
                if op.contains("--") || op.contains("/*") {
                    return Err(SqlError::Comment);
                }
                out.push(Token::Op(op));
                i = j;
                continue;
            }
            other => return Err(SqlError::Character(other)),
        }
        i += 1;
    }
    Ok(out)
}

/// Skips a string literal's body from just after its opening quote; returns the index after
/// the closing quote. `''` is a quote; in an `E''` string a backslash escapes the next char.
fn skip_string(chars: &[char], mut i: usize, escapes: bool) -> Result<usize, SqlError> {
    loop {
        match chars.get(i) {
            None => return Err(SqlError::Unterminated("string")),
            Some('\\') if escapes => {
                if chars.get(i + 1).is_none() {
                    return Err(SqlError::Unterminated("string"));
                }
                i += 2;
            }
            Some('\'') => {
                if chars.get(i + 1) == Some(&'\'') {
                    i += 2;
                } else {
                    return Ok(i + 1);
                }
            }
            Some(_) => i += 1,
        }
    }
}

/// Reads a quoted identifier's body from just after its opening quote.
fn quoted_ident(chars: &[char], mut i: usize) -> Result<(String, usize), SqlError> {
    let mut name = String::new();
    loop {
        match chars.get(i) {
            None => return Err(SqlError::Unterminated("quoted identifier")),
            Some('"') => {
                if chars.get(i + 1) == Some(&'"') {
                    name.push('"');
                    i += 2;
                } else {
                    i += 1;
                    break;
                }
            }
            Some(c) => {
                name.push(*c);
                i += 1;
            }
        }
    }
    if name.is_empty() {
        return Err(SqlError::EmptyIdentifier);
    }
    ident_len_ok(&name)?;
    Ok((name, i))
}

/// Reads a decimal number (`1`, `1.5`, `.5`, `1.`, `1e-3`); returns the index after it.
fn number(chars: &[char], mut i: usize) -> Result<usize, SqlError> {
    let digit = |i: usize| chars.get(i).is_some_and(|c| c.is_ascii_digit());
    while digit(i) {
        i += 1;
    }
    if chars.get(i) == Some(&'.') {
        i += 1;
        while digit(i) {
            i += 1;
        }
    }
    if matches!(chars.get(i), Some('e' | 'E')) {
        let mut j = i + 1;
        if matches!(chars.get(j), Some('+' | '-')) {
            j += 1;
        }
        if !digit(j) {
            return Err(SqlError::Number);
        }
        i = j;
        while digit(i) {
            i += 1;
        }
    }
    if chars.get(i).is_some_and(|c| is_ident_char(*c) || *c == '.') {
        return Err(SqlError::Number);
    }
    Ok(i)
}

/// Which clause an expression is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A boolean condition (`subset__where`).
    Where,
    /// A sort list (`subset__order_by`): expressions with `ASC/DESC` and `NULLS FIRST/LAST`,
    /// separated by commas.
    OrderBy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// An operand must come next.
    Operand,
    /// An operand ended: an operator, a closing bracket, a comma or the end may come.
    Operator,
    /// `ASC`/`DESC` ended a sort item: `NULLS`, a comma or the end.
    Sorted,
    /// `NULLS FIRST/LAST` ended a sort item: a comma or the end.
    SortedNulls,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    Paren,
    Bracket,
}

fn is_reserved(word: &str) -> bool {
    RESERVED.contains(&word)
}

/// Reads an expression and checks that every column it refers to passes `grants` (called with
/// canonical names). Function names, type names after `::` and collation names are not
/// columns; everything else that is an identifier in an operand position is one.
pub fn check_sql(sql: &str, mode: Mode, grants: &dyn Fn(&str) -> bool) -> Result<(), SqlRefusal> {
    let tokens = tokenize(sql)?;
    if tokens.is_empty() {
        // Electric reads an empty (or blank) value as no clause
        return Ok(());
    }
    let unexpected = |t: &Token| SqlRefusal::NotUnderstood(SqlError::Unexpected(t.describe()));
    let mut stack: Vec<Open> = Vec::new();
    let mut state = State::Operand;
    // an opening bracket was just read where an empty list is fine: `now()`, `ARRAY[]`
    let mut may_close_empty = false;
    let mut i = 0;
    let push = |stack: &mut Vec<Open>, o: Open| -> Result<(), SqlError> {
        if stack.len() >= MAX_DEPTH {
            return Err(SqlError::TooDeep);
        }
        stack.push(o);
        Ok(())
    };
    while let Some(t) = tokens.get(i) {
        let next = tokens.get(i + 1);
        let next_word = next.and_then(Token::word);
        let empty_ok = std::mem::take(&mut may_close_empty);
        i += 1;
        match state {
            State::Operand => match t {
                Token::Ident { name, quoted } => {
                    let keyword = (!quoted).then_some(name.as_str());
                    match keyword {
                        Some("not") => {}
                        Some("true" | "false" | "null") => state = State::Operator,
                        Some("array") => {
                            if next != Some(&Token::LBracket) {
                                return Err(SqlError::Keyword(name.clone()).into());
                            }
                            push(&mut stack, Open::Bracket)?;
                            i += 1;
                            may_close_empty = true;
                        }
                        Some("any" | "some" | "all") => {
                            if next != Some(&Token::LParen) {
                                return Err(SqlError::Keyword(name.clone()).into());
                            }
                            push(&mut stack, Open::Paren)?;
                            i += 1;
                        }
                        Some(k) if is_reserved(k) => {
                            return Err(SqlError::Keyword(k.to_string()).into())
                        }
                        _ if next == Some(&Token::LParen) => {
                            if *quoted || !FUNCTIONS.contains(&name.as_str()) {
                                return Err(SqlError::Function(name.clone()).into());
                            }
                            push(&mut stack, Open::Paren)?;
                            i += 1;
                            may_close_empty = true;
                        }
                        _ => {
                            if !grants(name) {
                                return Err(SqlRefusal::Column(name.clone()));
                            }
                            state = State::Operator;
                        }
                    }
                }
                Token::Str | Token::Number | Token::Param => state = State::Operator,
                // a prefix operator: `-1`, `+1`, `~bits`, `@ n` (abs), `|/ n` (sqrt)
                Token::Op(o) if PREFIX_OPS.contains(&o.as_str()) => {}
                Token::LParen => push(&mut stack, Open::Paren)?,
                Token::RParen if empty_ok && stack.last() == Some(&Open::Paren) => {
                    stack.pop();
                    state = State::Operator;
                }
                Token::RBracket if empty_ok && stack.last() == Some(&Open::Bracket) => {
                    stack.pop();
                    state = State::Operator;
                }
                other => return Err(unexpected(other)),
            },
            State::Operator => match t {
                Token::Op(_) => state = State::Operand,
                Token::Cast => {
                    i = type_name(&tokens, i)?;
                }
                Token::RParen if stack.last() == Some(&Open::Paren) => {
                    stack.pop();
                }
                Token::RBracket if stack.last() == Some(&Open::Bracket) => {
                    stack.pop();
                }
                Token::LBracket => {
                    // a subscript: `tags[1]`
                    push(&mut stack, Open::Bracket)?;
                    state = State::Operand;
                }
                Token::Comma if !stack.is_empty() || mode == Mode::OrderBy => {
                    state = State::Operand;
                }
                Token::Ident {
                    name,
                    quoted: false,
                } => match name.as_str() {
                    "and" | "or" => state = State::Operand,
                    "isnull" | "notnull" => {}
                    "is" => {
                        let mut j = i;
                        if tokens.get(j).and_then(Token::word) == Some("not") {
                            j += 1;
                        }
                        match tokens.get(j).and_then(Token::word) {
                            Some("null" | "true" | "false" | "unknown") => i = j + 1,
                            Some("distinct")
                                if tokens.get(j + 1).and_then(Token::word) == Some("from") =>
                            {
                                i = j + 2;
                                state = State::Operand;
                            }
                            _ => return Err(SqlError::Unexpected("IS ...".into()).into()),
                        }
                    }
                    "not" => match next_word {
                        Some("like" | "ilike" | "between" | "in" | "similar") => {
                            // read the operator itself on the next round
                        }
                        _ => return Err(SqlError::Unexpected("NOT".into()).into()),
                    },
                    "like" | "ilike" | "escape" => state = State::Operand,
                    "similar" => {
                        if next_word != Some("to") {
                            return Err(SqlError::Keyword("similar".into()).into());
                        }
                        i += 1;
                        state = State::Operand;
                    }
                    "between" => {
                        if matches!(next_word, Some("symmetric" | "asymmetric")) {
                            i += 1;
                        }
                        state = State::Operand;
                    }
                    "in" => {
                        if next != Some(&Token::LParen) {
                            return Err(SqlError::Keyword("in".into()).into());
                        }
                        push(&mut stack, Open::Paren)?;
                        i += 1;
                        state = State::Operand;
                    }
                    "collate" => match next {
                        Some(Token::Ident { name, quoted }) if *quoted || !is_reserved(name) => {
                            i += 1;
                        }
                        _ => return Err(SqlError::Keyword("collate".into()).into()),
                    },
                    "asc" | "desc" if mode == Mode::OrderBy && stack.is_empty() => {
                        state = State::Sorted;
                    }
                    "nulls" if mode == Mode::OrderBy && stack.is_empty() => {
                        nulls(next_word)?;
                        i += 1;
                        state = State::SortedNulls;
                    }
                    _ => return Err(unexpected(t)),
                },
                other => return Err(unexpected(other)),
            },
            State::Sorted => match t {
                Token::Comma => state = State::Operand,
                Token::Ident {
                    name,
                    quoted: false,
                } if name == "nulls" => {
                    nulls(next_word)?;
                    i += 1;
                    state = State::SortedNulls;
                }
                other => return Err(unexpected(other)),
            },
            State::SortedNulls => match t {
                Token::Comma => state = State::Operand,
                other => return Err(unexpected(other)),
            },
        }
    }
    let complete = match state {
        State::Operator => true,
        State::Sorted | State::SortedNulls => mode == Mode::OrderBy,
        State::Operand => false,
    };
    if !complete || !stack.is_empty() {
        return Err(SqlError::Incomplete.into());
    }
    Ok(())
}

fn nulls(next: Option<&str>) -> Result<(), SqlError> {
    match next {
        Some("first" | "last") => Ok(()),
        _ => Err(SqlError::Unexpected("NULLS without FIRST or LAST".into())),
    }
}

/// Reads a type name after `::` starting at `i`; returns the index after it. A type name is not
/// a column: `x::"MyEnum"`, `x::double precision`, `x::varchar(20)[]`.
fn type_name(tokens: &[Token], mut i: usize) -> Result<usize, SqlError> {
    match tokens.get(i) {
        Some(Token::Ident { name, quoted }) if *quoted || !is_reserved(name) => i += 1,
        Some(other) => {
            return Err(SqlError::Unexpected(format!(
                "{} after '::'",
                other.describe()
            )))
        }
        None => return Err(SqlError::Incomplete),
    }
    while tokens
        .get(i)
        .and_then(Token::word)
        .is_some_and(|w| TYPE_WORDS.contains(&w))
    {
        i += 1;
    }
    if tokens.get(i) == Some(&Token::LParen) {
        // type modifiers: (n) or (n, m)
        i += 1;
        loop {
            match (tokens.get(i), tokens.get(i + 1)) {
                (Some(Token::Number), Some(Token::Comma)) => i += 2,
                (Some(Token::Number), Some(Token::RParen)) => {
                    i += 2;
                    break;
                }
                _ => return Err(SqlError::Unexpected("type modifier".into())),
            }
        }
    }
    while tokens.get(i) == Some(&Token::LBracket) {
        match (tokens.get(i + 1), tokens.get(i + 2)) {
            (Some(Token::RBracket), _) => i += 2,
            (Some(Token::Number), Some(Token::RBracket)) => i += 3,
            _ => return Err(SqlError::Unexpected("array type".into())),
        }
    }
    Ok(i)
}

/// Checks the TypeScript client's structured `whereExpr`: `{type: "ref", column}`,
/// `{type: "val", paramIndex}`, `{type: "func", name, args}`. Column names are the names the
/// client quotes verbatim into SQL.
fn check_where_expr(
    v: &Value,
    grants: &dyn Fn(&str) -> bool,
    depth: usize,
) -> Result<(), SqlRefusal> {
    if depth > MAX_DEPTH {
        return Err(SqlError::TooDeep.into());
    }
    let obj = v
        .as_object()
        .ok_or(SqlError::Structure("a node is not an object"))?;
    let only = |keys: &[&str]| -> Result<(), SqlError> {
        if obj.keys().all(|k| keys.contains(&k.as_str())) {
            Ok(())
        } else {
            Err(SqlError::Structure("unknown node field"))
        }
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("ref") => {
            only(&["type", "column"])?;
            let column = obj
                .get("column")
                .and_then(Value::as_str)
                .ok_or(SqlError::Structure("a ref has no column"))?;
            if grants(column) {
                Ok(())
            } else {
                Err(SqlRefusal::Column(column.to_string()))
            }
        }
        Some("val") => {
            only(&["type", "paramIndex"])?;
            match obj.get("paramIndex").and_then(Value::as_u64) {
                Some(n) if n >= 1 => Ok(()),
                _ => Err(SqlError::Structure("a val has no paramIndex").into()),
            }
        }
        Some("func") => {
            only(&["type", "name", "args"])?;
            let name = obj
                .get("name")
                .and_then(Value::as_str)
                .ok_or(SqlError::Structure("a func has no name"))?;
            if !EXPR_FUNCTIONS.contains(&name) {
                return Err(SqlError::Function(name.to_string()).into());
            }
            let args = obj
                .get("args")
                .and_then(Value::as_array)
                .ok_or(SqlError::Structure("a func has no args"))?;
            for a in args {
                check_where_expr(a, grants, depth + 1)?;
            }
            Ok(())
        }
        _ => Err(SqlError::Structure("unknown node type").into()),
    }
}

/// Checks the structured `orderByExpr`: `[{column, direction?: asc|desc, nulls?: first|last}]`.
fn check_order_by_expr(v: &Value, grants: &dyn Fn(&str) -> bool) -> Result<(), SqlRefusal> {
    let items = v
        .as_array()
        .ok_or(SqlError::Structure("order_by_expr is not an array"))?;
    for item in items {
        let obj = item
            .as_object()
            .ok_or(SqlError::Structure("a sort item is not an object"))?;
        for (k, val) in obj {
            match (k.as_str(), val) {
                ("column", Value::String(_)) => {}
                ("direction", Value::String(d)) if d == "asc" || d == "desc" => {}
                ("nulls", Value::String(n)) if n == "first" || n == "last" => {}
                _ => return Err(SqlError::Structure("unknown sort item field").into()),
            }
        }
        let column = obj
            .get("column")
            .and_then(Value::as_str)
            .ok_or(SqlError::Structure("a sort item has no column"))?;
        if !grants(column) {
            return Err(SqlRefusal::Column(column.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::parse_query;
    use proptest::prelude::*;
    use serde_json::json;

    const COLS: &[&str] = &["id", "title", "Done", "priority", "tags", "created_at"];

    fn grants(c: &str) -> bool {
        COLS.contains(&c)
    }

    fn w(sql: &str) -> Result<(), SqlRefusal> {
        check_sql(sql, Mode::Where, &grants)
    }

    fn o(sql: &str) -> Result<(), SqlRefusal> {
        check_sql(sql, Mode::OrderBy, &grants)
    }

    fn col(c: &str) -> Result<(), SqlRefusal> {
        Err(SqlRefusal::Column(c.to_string()))
    }

    fn not_understood(r: Result<(), SqlRefusal>) -> bool {
        matches!(r, Err(SqlRefusal::NotUnderstood(_)))
    }

    #[test]
    fn tokens() {
        use Token::*;
        let id = |n: &str, q: bool| Ident {
            name: n.into(),
            quoted: q,
        };
        assert_eq!(
            tokenize(r#"Title = 'it''s' AND "Done"::BOOL<>$12"#).unwrap(),
            vec![
                id("title", false),
                Op("=".into()),
                Str,
                id("and", false),
                id("Done", true),
                Cast,
                id("bool", false),
                Op("<>".into()),
                Param
            ]
        );
        assert_eq!(
            tokenize(r#""a""b" e'x\'y' 1.5e-3 .5 1."#).unwrap(),
            vec![id("a\"b", true), Str, Number, Number, Number]
        );
        assert_eq!(tokenize("  \n\t").unwrap(), vec![]);
        assert_eq!(
            tokenize("ÜBER_$1").unwrap(),
            vec![id("Über_$1", false)],
            "ASCII-only folding, $ inside a name"
        );
    }

    #[test]
    fn lexical_refusals() {
        for (sql, err) in [
            ("id = 1 -- x", SqlError::Comment),
            ("id = 1 /* x */", SqlError::Comment),
            ("id =-- x", SqlError::Comment),
            ("id = 1 *//* x", SqlError::Comment),
            ("id = $$x$$", SqlError::DollarQuote),
            ("id = $q$x$q$", SqlError::DollarQuote),
            ("id = 'x", SqlError::Unterminated("string")),
            ("id = 'x''", SqlError::Unterminated("string")),
            (r"id = e'x\'", SqlError::Unterminated("string")),
            (r"id = E'x\", SqlError::Unterminated("string")),
            ("\"id = 1", SqlError::Unterminated("quoted identifier")),
            ("\"\" = 1", SqlError::EmptyIdentifier),
            ("id = U&'d\\0061'", SqlError::PrefixedLiteral),
            ("U&\"d\\0061t\" = 1", SqlError::PrefixedLiteral),
            ("id = B'101'", SqlError::PrefixedLiteral),
            ("id = X'ff'", SqlError::PrefixedLiteral),
            ("id = N'x'", SqlError::PrefixedLiteral),
            ("id = 1; drop table x", SqlError::Character(';')),
            ("items.id = 1", SqlError::Character('.')),
            ("(items).id = 1", SqlError::Character('.')),
            ("id = 1\u{0}", SqlError::Character('\u{0}')),
            ("id = 1\u{b}", SqlError::Character('\u{b}')),
            ("id = 1abc", SqlError::Number),
            ("id = 0x1f", SqlError::Number),
            ("id = 1_000", SqlError::Number),
            ("id = 1e", SqlError::Number),
            ("id = 1.2.3", SqlError::Number),
            ("id = $1abc", SqlError::Number),
            ("id : 1", SqlError::Character(':')),
        ] {
            assert_eq!(tokenize(sql), Err(err), "{sql}");
        }
        assert_eq!(
            tokenize(&format!("{} = 1", "a".repeat(64))),
            Err(SqlError::IdentifierTooLong)
        );
        assert_eq!(
            tokenize(&format!("\"{}\" = 1", "é".repeat(32))),
            Err(SqlError::IdentifierTooLong),
            "63 bytes, not characters: Postgres would truncate"
        );
        assert!(tokenize(&format!("{} = 1", "a".repeat(63))).is_ok());
    }

    #[test]
    fn strings_hide_nothing_and_show_nothing() {
        // a standard string keeps its backslash: the quote after it ends the string
        assert_eq!(w(r"title = 'a\' OR secret = 'x'"), col("secret"));
        // in an E string the backslash escapes the quote: all of it is one string
        assert_eq!(w(r"title = E'a\' OR secret = \'x'"), Ok(()));
        assert_eq!(w("title = 'secret = 1'"), Ok(()));
        assert_eq!(w("title = 'it''s'' OR secret = ''1'"), Ok(()));
        assert_eq!(w("\"title\" = 'a' OR \"secret\" = 'b'"), col("secret"));
    }

    #[test]
    fn allowed_expressions() {
        for sql in [
            "id = 1",
            "ID = 1",
            "\"Done\" = true",
            "\"id\" = $1",
            "title ILIKE $1 AND priority >= 3",
            "(title LIKE 'a%' ESCAPE '!') OR NOT (priority < -1)",
            "title NOT LIKE 'x' AND title NOT ILIKE 'y'",
            "priority BETWEEN 1 AND 5 AND priority NOT BETWEEN SYMMETRIC 7 AND 6",
            "id IN (1, 2, 3) AND id NOT IN ($1, $2)",
            "id = ANY($1) AND priority <> ALL(ARRAY[1,2])",
            "tags @> ARRAY['a']::text[] AND tags[1] = 'x' AND ARRAY[]::int4[] = tags",
            "title IS NULL OR title IS NOT NULL OR \"Done\" IS TRUE OR \"Done\" IS NOT FALSE",
            "\"Done\" IS UNKNOWN OR title ISNULL OR title NOTNULL",
            "title IS DISTINCT FROM $1 AND title IS NOT DISTINCT FROM 'x'",
            "lower(title) = lower($1) AND upper(\"title\") <> ''",
            "coalesce(priority, 0) > 1 AND length(title) < 10",
            "concat(title, '-', id::text) = $1",
            "created_at > $1::timestamptz AND created_at < '2020-01-01'::timestamp with time zone",
            "priority::double precision > 1.5e3 AND title::varchar(20) = 'x' AND id::numeric(10, 2) > .5",
            "title COLLATE \"C\" < 'b' AND title COLLATE pg_c_utf8 > 'a'",
            "title SIMILAR TO 'a%' AND title NOT SIMILAR TO 'b%'",
            "((((id = 1))))",
            "-priority < +1 AND @ priority > |/ 4",
            "title || 'x' = 'ax' AND title ~~ 'a%' AND title !~~* 'B%'",
            "id = 1 AND \"Done\"",
            "timezone('UTC', created_at) > now_ish",
            "",
            "   ",
        ] {
            let r = w(sql);
            if sql.contains("now_ish") {
                assert_eq!(r, col("now_ish"));
            } else {
                assert_eq!(r, Ok(()), "{sql}");
            }
        }
        for sql in [
            "id",
            "id DESC",
            "\"Done\" ASC NULLS LAST, title",
            "priority DESC NULLS FIRST, id ASC",
            "lower(title) COLLATE \"C\" DESC",
            "title NULLS FIRST",
            "coalesce(priority, 0) + 1 DESC, created_at::date",
        ] {
            assert_eq!(o(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn hidden_columns_are_found_everywhere() {
        for (sql, hidden) in [
            ("secret = 1", "secret"),
            ("SECRET = 1", "secret"),
            ("\"Secret\" = 1", "Secret"),
            ("\"done\" = true", "done"), // the column is "Done": "done" is another one
            ("done = true", "done"),     // unquoted folds to done
            ("id = 1 AND (title = 'a' OR (priority > salary))", "salary"),
            ("lower(salary) = 'x'", "salary"),
            ("id IN (1, salary)", "salary"),
            ("id = ANY(ARRAY[salary])", "salary"),
            ("tags[salary] = 'x'", "salary"),
            ("title BETWEEN salary AND 'z'", "salary"),
            ("title IS DISTINCT FROM salary", "salary"),
            ("salary::text = '1'", "salary"),
            ("- salary < 0", "salary"),
            ("NOT salary", "salary"),
            ("items = items", "items"), // a whole-row reference is not a column the token grants
            ("first = 1", "first"),     // unreserved key words are columns in operand position
            ("last = 1 OR nulls = 2", "last"),
            ("between = 1", "between"),
            ("interval '1 day' = x", "interval"),
            ("date '2020-01-01' = x", "date"),
            ("xmin = 1", "xmin"),
            ("ctid = '(0,1)'", "ctid"),
        ] {
            assert_eq!(w(sql), col(hidden), "{sql}");
        }
        assert_eq!(o("secret DESC"), col("secret"));
        assert_eq!(o("id, salary"), col("salary"));
        assert_eq!(o("id NULLS LAST, lower(\"Salary\")"), col("Salary"));
    }

    #[test]
    fn what_the_reader_does_not_understand_is_refused() {
        for sql in [
            "id = (SELECT 1)",
            "EXISTS (SELECT 1 FROM items)",
            "id IN (SELECT id FROM other)",
            "CASE WHEN id = 1 THEN true END",
            "CAST(id AS text) = '1'",
            "pg_read_file('/etc/passwd') = ''",
            "query_to_xml('select secret from items', true, true, '') IS NOT NULL",
            "current_setting('x') = ''",
            "id = current_user",
            "id = CURRENT_DATE",
            "\"lower\"(title) = 'x'",
            "hidden(items) = 'x'",
            "row(id, title) = row(1, 'a')",
            "count(*) > 1",
            "title = 'a' ORDER BY secret",
            "id = 1 LIMIT 1",
            "id = 1 UNION SELECT 1",
            "id = 1)",
            "(id = 1",
            "id = [1]",
            "ARRAY(SELECT 1) = tags",
            "id = 1,2",
            "id =",
            "= 1",
            "id id",
            "id = 1 2",
            "'a' 'b' = title",
            "title = 'a' 'b'",
            "id IS 1",
            "id IS NOT",
            "id NOT = 1",
            "title SIMILAR 'a'",
            "id IN 1",
            "id DESC",
            "id = 1 NULLS FIRST",
            "title COLLATE",
            "title COLLATE select",
            "id::",
            "id::select",
            "id::int(x)",
            "id::int[x]",
            "id AT TIME ZONE 'UTC'",
            "f(a => 1)",
            "lower(title ORDER BY id)",
            "lower(DISTINCT title)",
            "lower(title) OVER ()",
            "id OPERATOR(pg_catalog.=) 1",
            "id = 1 AND",
            "NOT",
            "()",
            "now()",
        ] {
            assert!(not_understood(w(sql)), "{sql}: {:?}", w(sql));
        }
        for sql in [
            "id DESC DESC",
            "id NULLS",
            "id NULLS LATER",
            "id ASC NULLS FIRST NULLS LAST",
            "id USING <",
            "(id DESC)",
            "id,",
            ",id",
        ] {
            assert!(not_understood(o(sql)), "{sql}: {:?}", o(sql));
        }
        let deep = format!("{}id = 1{}", "(".repeat(65), ")".repeat(65));
        assert_eq!(w(&deep), Err(SqlRefusal::NotUnderstood(SqlError::TooDeep)));
        let ok = format!("{}id = 1{}", "(".repeat(64), ")".repeat(64));
        assert_eq!(w(&ok), Ok(()));
    }

    #[test]
    fn structured_expressions() {
        let g = &grants;
        let e = json!({"type": "func", "name": "and", "args": [
            {"type": "func", "name": "eq", "args": [{"type": "ref", "column": "Done"}, {"type": "val", "paramIndex": 1}]},
            {"type": "func", "name": "isNull", "args": [{"type": "ref", "column": "title"}]}
        ]});
        assert_eq!(check_where_expr(&e, g, 0), Ok(()));
        let hidden = json!({"type": "func", "name": "gt", "args": [{"type": "ref", "column": "salary"}, {"type": "val", "paramIndex": 1}]});
        assert_eq!(check_where_expr(&hidden, g, 0), col("salary"));
        for bad in [
            json!({"type": "ref"}),
            json!({"type": "ref", "column": "id", "table": "x"}),
            json!({"type": "func", "name": "pg_read_file", "args": []}),
            json!({"type": "func", "name": "eq"}),
            json!({"type": "sql", "text": "secret = 1"}),
            json!({"type": "val", "paramIndex": 0}),
            json!("id = 1"),
        ] {
            assert!(not_understood(check_where_expr(&bad, g, 0)), "{bad}");
        }
        let mut deep = json!({"type": "ref", "column": "id"});
        for _ in 0..70 {
            deep = json!({"type": "func", "name": "not", "args": [deep]});
        }
        assert!(not_understood(check_where_expr(&deep, g, 0)));
        assert_eq!(
            check_order_by_expr(
                &json!([{"column": "title", "direction": "desc", "nulls": "last"}, {"column": "id"}]),
                g
            ),
            Ok(())
        );
        assert_eq!(
            check_order_by_expr(&json!([{"column": "salary"}]), g),
            col("salary")
        );
        for bad in [
            json!({"column": "id"}),
            json!([{"column": "id", "direction": "sideways"}]),
            json!([{"column": "id", "expr": "x"}]),
            json!([{"direction": "asc"}]),
        ] {
            assert!(not_understood(check_order_by_expr(&bad, g)), "{bad}");
        }
    }

    fn q(s: &str) -> Result<Subset, SubsetError> {
        subset_from_query(&parse_query(s).unwrap())
    }

    #[test]
    fn query_subsets() {
        let s = q("table=items&offset=-1&subset__where=id+%3D+%241&subset__params=%7B%221%22%3A%2242%22%7D&subset__order_by=title&subset__limit=10&subset__offset=0").unwrap();
        assert!(s.present);
        assert_eq!(s.where_clauses, vec!["id = $1"]);
        assert_eq!(s.order_bys, vec!["title"]);
        let none = q("table=items&offset=-1&where=x&subsetx=1&subsets=1").unwrap();
        assert!(!none.present);
        assert!(q("table=items&subset__limit=5").unwrap().present);
        assert!(q("subset__params[1]=a&subset__params%5B2%5D=b").is_ok());
        let e = |s: &str| q(s).unwrap_err();
        assert_eq!(
            e("subset__where=a&subset__where=b"),
            SubsetError::Duplicate("subset__where".into())
        );
        assert_eq!(
            e("subset__params[1]=a&subset__params=%7B%7D"),
            SubsetError::Duplicate("subset__params".into())
        );
        assert_eq!(
            e("subset__params=%7B%7D&subset__params[1]=a"),
            SubsetError::Duplicate("subset__params".into())
        );
        assert_eq!(
            e("subset__params[1]=a&subset__params[1]=b"),
            SubsetError::Duplicate("subset__params[1]".into())
        );
        assert_eq!(
            e("subset__wh%65re=a"),
            SubsetError::EncodedName("subset__where".into())
        );
        assert_eq!(
            e("subset%5F%5Fwhere=a"),
            SubsetError::EncodedName("subset__where".into())
        );
        assert_eq!(
            e("subset[where]=secret%3D1"),
            SubsetError::Unknown("subset[where]".into())
        );
        assert_eq!(e("subset=x"), SubsetError::Unknown("subset".into()));
        assert_eq!(
            e("subset__columns=x"),
            SubsetError::Unknown("subset__columns".into())
        );
        assert_eq!(e("subset__=x"), SubsetError::Unknown("subset__".into()));
        for bad in [
            "subset__limit=-1",
            "subset__limit=0",
            "subset__limit=1.5",
            "subset__limit=+1",
            "subset__limit=",
            "subset__limit=9999999999999999999",
            "subset__offset=x",
            "subset__params=x",
            "subset__params=%5B1%5D",
            "subset__params=%7B%220%22%3A1%7D",
            "subset__params=%7B%221%22%3A%7B%7D%7D",
            "subset__where[]=x",
            "subset__where[x]=x",
            "subset__params[0]=x",
            "subset__params[a]=x",
            "subset__where_expr=nope",
        ] {
            assert!(
                matches!(q(bad), Err(SubsetError::Invalid { .. })),
                "{bad}: {:?}",
                q(bad)
            );
        }
        assert!(q("subset__offset=0&subset__limit=1").is_ok());
    }

    #[test]
    fn body_subsets() {
        assert_eq!(subset_from_body(b"").unwrap(), Subset::default());
        assert!(!subset_from_body(b"{}").unwrap().present);
        let s = subset_from_body(
            br#"{"where": "\"id\" = $1", "params": {"1": "x", "2": 5}, "limit": 5, "offset": "0",
                 "order_by": "title DESC", "where_expr": {"type": "ref", "column": "Done"},
                 "order_by_expr": [{"column": "title", "direction": "desc"}]}"#,
        )
        .unwrap();
        assert!(s.present);
        assert_eq!(s.where_clauses, vec!["\"id\" = $1"]);
        assert_eq!(s.order_bys, vec!["title DESC"]);
        assert_eq!(s.where_exprs.len(), 1);
        assert_eq!(s.order_by_exprs.len(), 1);
        assert!(subset_from_body(br#"{"limit": null}"#).unwrap().present);
        assert!(subset_from_body(br#"{"params": "{\"1\": \"a\"}"}"#).is_ok());
        assert!(
            subset_from_body(br#"{"where_expr": "{\"type\": \"ref\", \"column\": \"id\"}"}"#)
                .is_ok()
        );
        let cases: &[(&str, &str)] = &[
            (r#"{"table": "secrets"}"#, "BodyKey"),
            (r#"{"where": "id = 1", "columns": "secret"}"#, "BodyKey"),
            (r#"{"subset": {"where": "secret = 1"}}"#, "BodyKey"),
            (r#"{"secret": "x"}"#, "BodyKey"),
            ("[]", "BodyNotObject"),
            ("\"x\"", "BodyNotObject"),
            ("null", "BodyNotObject"),
            (" ", "BodyNotJson"),
            ("{", "BodyNotJson"),
            ("{\"where\": \"a\"} x", "BodyNotJson"),
            (
                r#"{"where": "id = 1", "where": "secret = 1"}"#,
                "BodyNotJson",
            ),
            (r#"{"where": 5}"#, "Invalid"),
            (r#"{"limit": -1}"#, "Invalid"),
            (r#"{"limit": 0}"#, "Invalid"),
            (r#"{"limit": 1.5}"#, "Invalid"),
            (r#"{"offset": "x"}"#, "Invalid"),
            (r#"{"params": [1]}"#, "Invalid"),
            (r#"{"params": {"a": "1"}}"#, "Invalid"),
            (r#"{"params": {"1": null}}"#, "Invalid"),
            (r#"{"where_expr": "nope"}"#, "Invalid"),
        ];
        for (body, want) in cases {
            let e = subset_from_body(body.as_bytes()).unwrap_err();
            assert!(format!("{e:?}").starts_with(want), "{body}: {e:?}");
        }
        assert!(matches!(
            subset_from_body(b"\xff\xfe"),
            Err(SubsetError::BodyNotJson(_))
        ));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            subset_from_body(format!("{{\"where_expr\": {deep}}}").as_bytes()),
            Err(SubsetError::BodyNotJson(_))
        ));
    }

    fn grant(allowed: bool, cols: Option<&[&str]>) -> SubsetGrant {
        SubsetGrant {
            allowed,
            columns: cols.map(|c| c.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn decisions() {
        let hidden = q("subset__where=salary+%3E+1").unwrap();
        let fine = q("subset__where=id+%3D+1&subset__order_by=title").unwrap();
        let nothing = q("table=items").unwrap();
        let cols: &[&str] = &["id", "title"];
        assert_eq!(check(&grant(false, Some(cols)), &nothing), Ok(()));
        assert_eq!(
            check(&grant(false, None), &fine),
            Err(SubsetRefusal::NotAllowed)
        );
        assert_eq!(check(&grant(true, Some(cols)), &fine), Ok(()));
        assert_eq!(
            check(&grant(true, Some(cols)), &hidden),
            Err(SubsetRefusal::Column {
                param: "subset where",
                column: "salary".into()
            })
        );
        // no column restriction: the subset narrows within the shape, which syncs every column
        assert_eq!(check(&grant(true, None), &hidden), Ok(()));
        let odd = q("subset__where=id+%3D+1+--").unwrap();
        assert!(matches!(
            check(&grant(true, Some(cols)), &odd),
            Err(SubsetRefusal::NotUnderstood { .. })
        ));
        let by = subset_from_body(br#"{"order_by": "salary"}"#).unwrap();
        let r = check(&grant(true, Some(cols)), &by).unwrap_err();
        assert_eq!(r.reason(), "subset_column");
        assert_eq!(
            r.to_string(),
            "subset order_by refers to column 'salary', which the token does not grant"
        );
        let limit_only = subset_from_body(br#"{"limit": 5}"#).unwrap();
        assert_eq!(
            check(&grant(false, Some(cols)), &limit_only),
            Err(SubsetRefusal::NotAllowed)
        );
    }

    #[test]
    fn grants_come_from_the_claim() {
        let claims = |v: Value| crate::shape::shape_from_claim("shape", &json!({ "shape": v }));
        let s = claims(json!({"table": "t", "columns": ["id", "title"], "subsets": true})).unwrap();
        assert_eq!(SubsetGrant::of(&s), grant(true, Some(&["id", "title"])));
        let s =
            claims(json!({"table": "t", "columns": ["id"], "queryable_columns": ["id", "org"]}))
                .unwrap();
        assert_eq!(SubsetGrant::of(&s), grant(false, Some(&["id", "org"])));
        let s = claims(json!({"table": "t", "subsets": null})).unwrap();
        assert_eq!(SubsetGrant::of(&s), grant(false, None));
        assert!(matches!(
            claims(json!({"table": "t", "subsets": "yes"})),
            Err(ClaimError::BadField { .. })
        ));
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = tokenize(&s);
            let _ = w(&s);
            let _ = o(&s);
            let _ = subset_from_body(s.as_bytes());
        }

        #[test]
        fn sql_like_noise_never_panics(s in "[a-z\"'$()\\[\\],:.= <>!0-9eE\\\\-]{0,60}") {
            let _ = w(&s);
            let _ = o(&s);
        }

        /// Generated expressions over granted columns pass; putting a hidden column in any
        /// operand position is caught.
        #[test]
        fn hidden_columns_never_slip_through(
            parts in proptest::collection::vec((0usize..6, 0usize..5, any::<bool>()), 1..6),
            hide_at in 0usize..6,
        ) {
            let ops = ["=", "<>", "<", ">=", "ILIKE"];
            let mut clean = Vec::new();
            let mut dirty = Vec::new();
            for (n, (c, op, quoted)) in parts.iter().enumerate() {
                let name = COLS[*c];
                let ident = if *quoted || name != name.to_ascii_lowercase() { format!("\"{name}\"") } else { name.to_string() };
                let term = format!("{ident} {} ${}", ops[*op], n + 1);
                clean.push(term.clone());
                dirty.push(if n == hide_at % parts.len() { format!("\"secret\" {} ${}", ops[*op], n + 1) } else { term });
            }
            let clean = clean.join(" AND ");
            let dirty = format!("({})", dirty.join(") OR ("));
            prop_assert_eq!(w(&clean), Ok(()));
            prop_assert_eq!(w(&dirty), col("secret"));
        }
    }
}
