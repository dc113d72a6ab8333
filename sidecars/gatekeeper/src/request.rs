//! Reading `POST /gatekeeper/:table` as Electric's gatekeeper does: the table from the path
//! (raw, percent-decoded, never split or unquoted), `where`, `namespace`, `columns`,
//! `params[n]`, `replica` and `log` from the query string or a JSON body.
//!
//! Stricter than Electric's example where it matters: a parameter given twice (in the query,
//! or in both the query and the body) is refused instead of "last one wins", and a body that
//! is not a JSON object is refused. Like Electric, a `table` parameter is ignored (the path
//! names the table) and so is anything unknown; `columns=a,b` is split on `,` with empty
//! parts dropped and nothing trimmed, `columns=` meaning "not given".

use std::collections::BTreeMap;

use edgeguard_verdict::query::parse_query;
use percent_encoding::percent_decode_str;
use serde_json::Value as Json;

use crate::electric::{LogMode, Replica, ShapeRequest};
use crate::refusal::{Reason, Refusal};

/// The largest request body accepted (bytes).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

fn bad(message: impl Into<String>) -> Refusal {
    Refusal::new(Reason::BadRequest, message)
}

/// Electric's `columns` split: on `,`, empty parts dropped, nothing trimmed; `None` for `""`.
fn split_columns(v: &str) -> Option<Vec<String>> {
    let cols: Vec<String> = v
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    (!cols.is_empty()).then_some(cols)
}

fn param_index(inner: &str) -> Option<u32> {
    if inner.is_empty() || inner.starts_with('0') || !inner.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    inner.parse().ok()
}

fn replica(v: &str) -> Result<Replica, Refusal> {
    Replica::parse(v).ok_or_else(|| bad(format!("replica '{v}' is not 'default' or 'full'")))
}

fn log(v: &str) -> Result<LogMode, Refusal> {
    LogMode::parse(v).ok_or_else(|| bad(format!("log '{v}' is not 'full' or 'changes_only'")))
}

/// Collects the fields, refusing any given twice.
#[derive(Default)]
struct Fields {
    seen: Vec<String>,
    req: ShapeRequest,
}

impl Fields {
    fn once(&mut self, name: &str) -> Result<(), Refusal> {
        if self.seen.iter().any(|s| s == name) {
            return Err(bad(format!("'{name}' is given more than once")));
        }
        self.seen.push(name.to_string());
        Ok(())
    }

    fn query(&mut self, query: &str) -> Result<(), Refusal> {
        let params = parse_query(query).map_err(|e| bad(e.to_string()))?;
        for p in &params {
            let (name, value): (&str, &str) = (&p.name, &p.value);
            match name {
                "where" => {
                    self.once(name)?;
                    self.req.where_clause = Some(value.to_string());
                }
                "namespace" => {
                    self.once(name)?;
                    self.req.namespace = Some(value.to_string());
                }
                "columns" => {
                    self.once(name)?;
                    self.req.columns = split_columns(value);
                }
                "replica" => {
                    self.once(name)?;
                    self.req.replica = Some(replica(value)?);
                }
                "log" => {
                    self.once(name)?;
                    self.req.log = Some(log(value)?);
                }
                _ => {
                    if let Some(inner) = name
                        .strip_prefix("params[")
                        .and_then(|r| r.strip_suffix(']'))
                    {
                        let n = param_index(inner).ok_or_else(|| {
                            bad(format!(
                                "'{name}': parameters are params[1], params[2], ..."
                            ))
                        })?;
                        self.once(&format!("params[{n}]"))?;
                        self.req.params.insert(n, value.to_string());
                    }
                    // `table` (the path names it) and anything else: ignored, as Electric does
                }
            }
        }
        Ok(())
    }

    fn body(&mut self, body: &Json) -> Result<(), Refusal> {
        let Json::Object(obj) = body else {
            return Err(bad("the body must be a JSON object"));
        };
        let string = |field: &str, v: &Json| -> Result<Option<String>, Refusal> {
            match v {
                Json::Null => Ok(None),
                Json::String(s) => Ok(Some(s.clone())),
                _ => Err(bad(format!("'{field}' must be a string or null"))),
            }
        };
        for (field, v) in obj {
            match field.as_str() {
                "where" => {
                    if let Some(s) = string(field.as_str(), v)? {
                        self.once(field)?;
                        self.req.where_clause = Some(s);
                    }
                }
                "namespace" => {
                    if let Some(s) = string(field.as_str(), v)? {
                        self.once(field)?;
                        self.req.namespace = Some(s);
                    }
                }
                "replica" => {
                    if let Some(s) = string(field.as_str(), v)? {
                        self.once(field)?;
                        self.req.replica = Some(replica(&s)?);
                    }
                }
                "log" => {
                    if let Some(s) = string(field.as_str(), v)? {
                        self.once(field)?;
                        self.req.log = Some(log(&s)?);
                    }
                }
                "columns" => match v {
                    Json::Null => {}
                    Json::String(s) => {
                        self.once(field)?;
                        self.req.columns = split_columns(s);
                    }
                    Json::Array(items) => {
                        self.once(field)?;
                        let cols = items
                            .iter()
                            .map(|c| match c {
                                Json::String(s) if !s.is_empty() => Ok(s.clone()),
                                _ => Err(bad("'columns' must be an array of non-empty strings")),
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        self.req.columns = Some(cols);
                    }
                    _ => {
                        return Err(bad(
                            "'columns' must be an array of strings, a string or null",
                        ))
                    }
                },
                "params" => {
                    let values: Vec<(u32, &Json)> = match v {
                        Json::Null => Vec::new(),
                        Json::Array(items) => items
                            .iter()
                            .enumerate()
                            .map(|(i, v)| (u32::try_from(i + 1).unwrap_or(u32::MAX), v))
                            .collect(),
                        Json::Object(map) => map
                            .iter()
                            .map(|(k, v)| {
                                param_index(k).map(|n| (n, v)).ok_or_else(|| {
                                    bad(format!("params key '{k}' is not 1, 2, ..."))
                                })
                            })
                            .collect::<Result<_, _>>()?,
                        _ => return Err(bad("'params' must be an object, an array or null")),
                    };
                    for (n, v) in values {
                        let text = crate::policy::scalar_text(v)
                            .ok_or_else(|| bad(format!("params[{n}] must be a string")))?;
                        self.once(&format!("params[{n}]"))?;
                        self.req.params.insert(n, text);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Whether a `content-type` is JSON (or absent).
fn json_content_type(content_type: Option<&[u8]>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let ct = String::from_utf8_lossy(ct).to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or_default().trim();
    essence == "application/json" || essence.ends_with("+json")
}

/// Reads a request: `table_segment` is the raw (still percent-encoded) path segment.
pub fn read(
    table_segment: &str,
    query: Option<&str>,
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Result<ShapeRequest, Refusal> {
    let table = percent_decode_str(table_segment)
        .decode_utf8()
        .map_err(|_| bad("the table name is not UTF-8 once decoded"))?
        .into_owned();
    if table.is_empty() {
        return Err(bad("the path must name a table: POST /gatekeeper/<table>"));
    }
    let mut fields = Fields::default();
    if let Some(q) = query {
        fields.query(q)?;
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(bad(format!(
            "the body is larger than {MAX_BODY_BYTES} bytes"
        )));
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        if !json_content_type(content_type) {
            return Err(bad(
                "the body must be JSON (content-type: application/json)",
            ));
        }
        let json: Json =
            serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
        fields.body(&json)?;
    }
    let mut req = fields.req;
    if req.namespace.as_deref() == Some("") {
        return Err(bad("namespace must not be empty"));
    }
    req.table = table;
    Ok(req)
}

/// `params` as a JSON object `{"1": "..."}`.
pub fn params_json(params: &BTreeMap<u32, String>) -> Json {
    Json::Object(
        params
            .iter()
            .map(|(n, v)| (n.to_string(), Json::String(v.clone())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(seg: &str, q: Option<&str>, body: &str) -> ShapeRequest {
        read(seg, q, None, body.as_bytes()).unwrap()
    }

    fn err(seg: &str, q: Option<&str>, body: &str) -> String {
        read(seg, q, None, body.as_bytes()).unwrap_err().message
    }

    #[test]
    fn query_form() {
        let r = ok(
            "items",
            Some("where=status+%3D+%241&params%5B1%5D=open&columns=id,title,&replica=full&log=changes_only&namespace=app&table=ignored&offset=-1"),
            "",
        );
        assert_eq!(r.table, "items");
        assert_eq!(r.namespace.as_deref(), Some("app"));
        assert_eq!(r.where_clause.as_deref(), Some("status = $1"));
        assert_eq!(r.params, BTreeMap::from([(1, "open".into())]));
        assert_eq!(r.columns, Some(vec!["id".into(), "title".into()]));
        assert_eq!(r.replica, Some(Replica::Full));
        assert_eq!(r.log, Some(LogMode::ChangesOnly));
        assert_eq!(ok("items", Some("columns="), "").columns, None);
        // nothing trimmed, as Electric
        assert_eq!(
            ok("items", Some("columns=a,%20b"), "").columns,
            Some(vec!["a".into(), " b".into()])
        );
    }

    #[test]
    fn body_form() {
        let r = ok(
            "items",
            None,
            r#"{"where": "a = $1 and b = $2", "params": ["x", 2], "columns": ["id", "Title"], "replica": null, "namespace": null, "other": 1}"#,
        );
        assert_eq!(r.params, BTreeMap::from([(1, "x".into()), (2, "2".into())]));
        assert_eq!(r.columns, Some(vec!["id".into(), "Title".into()]));
        assert_eq!(r.replica, None);
        let r = ok(
            "items",
            None,
            r#"{"params": {"2": "b", "1": "a"}, "columns": "a,b"}"#,
        );
        assert_eq!(r.params, BTreeMap::from([(1, "a".into()), (2, "b".into())]));
        assert_eq!(r.columns, Some(vec!["a".into(), "b".into()]));
        assert_eq!(ok("items", None, "  \n").table, "items");
    }

    #[test]
    fn raw_table_names_from_the_path() {
        assert_eq!(ok("GkItems", None, "").table, "GkItems");
        assert_eq!(ok("gk.split", None, "").table, "gk.split");
        assert_eq!(ok("my%20table", None, "").table, "my table");
        assert_eq!(ok("%22quoted%22", None, "").table, "\"quoted\"");
        assert_eq!(ok("a+b", None, "").table, "a+b");
        assert!(err("%FF", None, "").contains("not UTF-8"));
        assert!(err("", None, "").contains("must name a table"));
    }

    #[test]
    fn refused_input() {
        assert_eq!(
            err("t", Some("where=a&where=b"), ""),
            "'where' is given more than once"
        );
        assert_eq!(
            err("t", Some("where=a"), r#"{"where": "b"}"#),
            "'where' is given more than once"
        );
        assert_eq!(
            err("t", Some("params[1]=a&params%5B1%5D=b"), ""),
            "'params[1]' is given more than once"
        );
        assert_eq!(
            err("t", Some("params[1]=a"), r#"{"params": ["b"]}"#),
            "'params[1]' is given more than once"
        );
        assert!(err("t", Some("params[0]=a"), "").contains("params[1], params[2]"));
        assert!(err("t", Some("params[x]=a"), "").contains("params[1], params[2]"));
        assert!(err("t", Some("replica=partial"), "").contains("not 'default' or 'full'"));
        assert!(err("t", Some("log=all"), "").contains("not 'full' or 'changes_only'"));
        assert!(err("t", Some("where=%ZZ"), "").contains("percent-encoding"));
        assert!(err("t", None, "[1]").contains("JSON object"));
        assert!(err("t", None, "{").contains("not JSON"));
        assert!(err("t", None, r#"{"where": 5}"#).contains("'where' must be a string"));
        assert!(err("t", None, r#"{"columns": [""]}"#).contains("non-empty strings"));
        assert!(err("t", None, r#"{"params": {"a": "x"}}"#).contains("params key 'a'"));
        assert!(err("t", None, r#"{"params": [{"x": 1}]}"#).contains("params[1] must be a string"));
        assert!(err("t", Some("namespace="), "").contains("namespace must not be empty"));
        let big = format!("{{\"where\": \"{}\"}}", "a".repeat(MAX_BODY_BYTES));
        assert!(err("t", None, &big).contains("larger than"));
        let e = read(
            "t",
            None,
            Some(b"application/x-www-form-urlencoded"),
            b"where=a",
        )
        .unwrap_err();
        assert!(e.message.contains("must be JSON"));
        assert!(read("t", None, Some(b"application/json; charset=utf-8"), b"{}").is_ok());
    }
}
