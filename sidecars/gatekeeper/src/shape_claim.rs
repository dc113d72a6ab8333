//! The `shape` claim the gatekeeper mints: raw names, exactly as Electric's gatekeeper writes
//! them, in the fields jwt-shape binds:
//!
//! ```json
//! {"namespace": null, "table": "items", "where": "(owner_id = $1) AND (done = $2)",
//!  "params": {"1": "alice", "2": "false"}, "columns": ["id", "title"],
//!  "replica": "default", "log": "full"}
//! ```
//!
//! `namespace` is the raw schema or `null`, `table` the raw table name (never split on `.`,
//! never quoted or case-folded), `where`/`params`/`columns` `null` when the shape has none.
//! Every claim is read back with jwt-shape's own reader
//! ([`edgeguard_verdict::shape::shape_from_claim`]) before it is signed.
//!
//! `subsets: true` is added for rules that allow subset snapshots (jwt-shape refuses every
//! subset request of a token without it).

use edgeguard_verdict::shape::{shape_from_claim, ClaimError};
use serde_json::{json, Map, Value};

use crate::decision::Grant;
use crate::electric::{LogMode, Replica};
use crate::policy::Rule;

/// The claim holding the shape.
pub const CLAIM: &str = "shape";

/// The claim for a grant, checked with jwt-shape's reader.
pub fn claim(grant: &Grant) -> Result<Value, ClaimError> {
    let mut shape = Map::new();
    shape.insert("namespace".into(), json!(grant.namespace));
    shape.insert("table".into(), json!(grant.table));
    shape.insert("where".into(), json!(grant.where_clause));
    let params = if grant.params.is_empty() {
        Value::Null
    } else {
        Value::Object(
            grant
                .params
                .iter()
                .map(|(n, v)| (n.to_string(), json!(v)))
                .collect(),
        )
    };
    shape.insert("params".into(), params);
    shape.insert("columns".into(), json!(grant.columns));
    shape.insert("replica".into(), json!(grant.replica.as_str()));
    shape.insert("log".into(), json!(grant.log.as_str()));
    if grant.subsets {
        shape.insert("subsets".into(), json!(true));
    }
    let shape = Value::Object(shape);
    shape_from_claim(CLAIM, &json!({ CLAIM: shape.clone() }))?;
    Ok(shape)
}

/// Mints a sample claim for a rule (its `where` with placeholder values, all its columns,
/// each mode it allows) and reads it back: `Err((field, why))` when jwt-shape could not bind
/// what the rule grants.
pub fn check_rule(rule: &Rule) -> Result<(), (&'static str, String)> {
    let (where_clause, params) = match &rule.where_template {
        Some(t) => (
            Some(t.sql.clone()),
            t.params
                .keys()
                .map(|n| (*n, "x".to_string()))
                .collect::<std::collections::BTreeMap<u32, String>>(),
        ),
        None => (None, Default::default()),
    };
    let replicas: Vec<Replica> = rule.replica.iter().copied().collect();
    let logs: Vec<LogMode> = rule.log.iter().copied().collect();
    for replica in &replicas {
        for log in &logs {
            let grant = Grant {
                rule: rule.name.clone(),
                namespace: rule.namespace.clone(),
                table: rule.table.clone(),
                where_clause: where_clause.clone(),
                params: params.clone(),
                columns: rule.columns.clone(),
                replica: *replica,
                log: *log,
                subsets: rule.subsets,
            };
            if let Err(e) = claim(&grant) {
                let field = match &e {
                    ClaimError::BadField { field, .. } => match field.as_str() {
                        "namespace" | "schema" => "namespace",
                        "columns" => "columns",
                        "where" | "params" => "where",
                        "replica" => "replica",
                        "log" => "log",
                        "subsets" => "subsets",
                        _ => "table",
                    },
                    _ => "table",
                };
                return Err((field, e.to_string()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn grant() -> Grant {
        Grant {
            rule: "r".into(),
            namespace: None,
            table: "items".into(),
            where_clause: Some("(owner_id = $1) AND (done = $2)".into()),
            params: BTreeMap::from([(1, "alice".to_string()), (2, "false".to_string())]),
            columns: Some(vec!["id".into(), "title".into()]),
            replica: Replica::Default,
            log: LogMode::Full,
            subsets: false,
        }
    }

    #[test]
    fn claim_has_every_field_electric_mints_plus_the_bound_ones() {
        let c = claim(&grant()).unwrap();
        assert_eq!(
            c,
            json!({"namespace": null, "table": "items", "where": "(owner_id = $1) AND (done = $2)",
                   "params": {"1": "alice", "2": "false"}, "columns": ["id", "title"],
                   "replica": "default", "log": "full"})
        );
        let mut g = grant();
        g.where_clause = None;
        g.params.clear();
        g.columns = None;
        g.namespace = Some("app".into());
        g.replica = Replica::Full;
        g.log = LogMode::ChangesOnly;
        let c = claim(&g).unwrap();
        assert_eq!(
            c,
            json!({"namespace": "app", "table": "items", "where": null, "params": null,
                   "columns": null, "replica": "full", "log": "changes_only"})
        );
    }

    #[test]
    fn every_field_name_is_one_jwt_shape_reads() {
        // shape_from_claim refuses unknown fields, so a claim it accepts uses only known ones
        let c = claim(&grant()).unwrap();
        for field in c.as_object().unwrap().keys() {
            let mut one = Map::new();
            one.insert("table".into(), json!("t"));
            one.insert(field.clone(), c[field].clone());
            assert!(
                shape_from_claim(CLAIM, &json!({ CLAIM: one })).is_ok(),
                "{field}"
            );
        }
    }

    #[test]
    fn subsets_are_granted_exactly_when_the_rule_allows_them() {
        let mut g = grant();
        assert!(claim(&g).unwrap().get("subsets").is_none());
        g.subsets = true;
        let c = claim(&g).unwrap();
        assert_eq!(c["subsets"], json!(true));
        // and jwt-shape reads it as the grant
        let shape = shape_from_claim(CLAIM, &json!({ CLAIM: c })).unwrap();
        assert!(shape.subsets);
    }
}
