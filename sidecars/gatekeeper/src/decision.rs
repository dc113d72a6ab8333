//! The decision: which shape, if any, a caller gets for what they asked.
//!
//! The first rule about the table (raw name and namespace) whose claim conditions hold
//! decides; put rules for narrower audiences (admins) first. Asking for more than the rule
//! allows is refused (403, saying what); asking for less is granted narrowed:
//!
//! - `columns`: a subset of the rule's (in the order asked); none asked: the rule's (or all);
//! - `replica` / `log`: one of the modes the rule allows (absent: `default` / `full`);
//! - `where`: none asked: the rule's, its `$n` filled from the caller's claims. The rule's
//!   own `where` sent back (as this endpoint returned it) is the same grant; its `params`,
//!   if sent, must be the ones the policy sets. Any other `where` is appended —
//!   `(<rule's where>) AND (<client's where>)`, the client's `$n` renumbered after the
//!   rule's — unless the rule says `client_where: refuse`.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::electric::{url_table_name, LogMode, Replica, ShapeRequest};
use crate::policy::{ClientWhere, Policy, Rule};
use crate::refusal::{Reason, Refusal};
use crate::where_clause;

/// What a caller is granted: the shape their token will carry (raw names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The rule that decided.
    pub rule: String,
    pub namespace: Option<String>,
    pub table: String,
    pub where_clause: Option<String>,
    pub params: BTreeMap<u32, String>,
    pub columns: Option<Vec<String>>,
    pub replica: Replica,
    pub log: LogMode,
    pub subsets: bool,
}

/// Decides a request for a caller with these claims.
pub fn decide(policy: &Policy, claims: &Json, req: &ShapeRequest) -> Result<Grant, Refusal> {
    let shown = url_table_name(req.namespace.as_deref(), &req.table);
    let mut unmet: Option<(String, String)> = None;
    for rule in &policy.rules {
        if !rule.covers(req.namespace.as_deref(), &req.table) {
            continue;
        }
        if let Some(why) = rule.when.iter().find_map(|c| c.check(claims).err()) {
            unmet.get_or_insert((rule.name.clone(), why));
            continue;
        }
        return grant(rule, claims, req);
    }
    Err(match unmet {
        Some((rule, why)) => Refusal::new(
            Reason::ConditionsNotMet,
            format!("no rule grants table {shown} to this caller (rule '{rule}': {why})"),
        ),
        None => Refusal::new(
            Reason::TableNotCovered,
            format!("no policy rule covers table {shown}"),
        ),
    })
}

fn columns(rule: &Rule, asked: Option<&[String]>) -> Result<Option<Vec<String>>, Refusal> {
    let Some(asked) = asked else {
        return Ok(rule.columns.clone());
    };
    if asked.is_empty() {
        return Err(Refusal::new(
            Reason::BadRequest,
            "columns must not be empty (leave it out for every column the policy allows)",
        ));
    }
    for (i, c) in asked.iter().enumerate() {
        if asked.get(..i).is_some_and(|before| before.contains(c)) {
            return Err(Refusal::new(
                Reason::BadRequest,
                format!("column '{c}' is listed twice"),
            ));
        }
        if let Some(allowed) = &rule.columns {
            if !allowed.contains(c) {
                return Err(Refusal::new(
                    Reason::ColumnNotAllowed,
                    format!(
                        "column '{c}' is not allowed (rule '{}' allows {})",
                        rule.name,
                        allowed.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(Some(asked.to_vec()))
}

/// The client's params must be exactly the placeholders its where uses.
fn check_client_params(sql: &str, params: &BTreeMap<u32, String>) -> Result<(), Refusal> {
    let used = where_clause::placeholders(sql)
        .map_err(|e| Refusal::new(Reason::BadRequest, format!("where: {e}")))?;
    if let Some(n) = used.iter().find(|n| !params.contains_key(n)) {
        return Err(Refusal::new(
            Reason::BadRequest,
            format!("where uses ${n} but params[{n}] is not given"),
        ));
    }
    if let Some(n) = params.keys().find(|n| !used.contains(n)) {
        return Err(Refusal::new(
            Reason::BadRequest,
            format!("params[{n}] is not used by where"),
        ));
    }
    Ok(())
}

type Filter = (Option<String>, BTreeMap<u32, String>);

fn filter(rule: &Rule, claims: &Json, req: &ShapeRequest) -> Result<Filter, Refusal> {
    let policy = match &rule.where_template {
        None => None,
        Some(t) => {
            let mut values = BTreeMap::new();
            for (n, source) in &t.params {
                let v = source.resolve(claims).map_err(|why| {
                    Refusal::new(
                        Reason::ClaimMissing,
                        format!("rule '{}' needs a value for ${n}: {why}", rule.name),
                    )
                })?;
                values.insert(*n, v);
            }
            Some((t.sql.clone(), values))
        }
    };
    let Some(client) = &req.where_clause else {
        if !req.params.is_empty() {
            return Err(Refusal::new(
                Reason::BadRequest,
                "params are given without a where",
            ));
        }
        return Ok(match policy {
            Some((sql, values)) => (Some(sql), values),
            None => (None, BTreeMap::new()),
        });
    };
    match policy {
        // the rule's own where, sent back: the same grant
        Some((sql, values)) if *client == sql => {
            let differs = (!req.params.is_empty())
                .then(|| {
                    values
                        .keys()
                        .chain(req.params.keys())
                        .find(|n| values.get(n) != req.params.get(n))
                })
                .flatten();
            if let Some(n) = differs {
                return Err(Refusal::new(
                    Reason::ParamsMismatch,
                    format!(
                        "params[{n}] is set by the policy from the caller's claims; leave params out or send the values this endpoint returned"
                    ),
                ));
            }
            Ok((Some(sql), values))
        }
        _ if rule.client_where == ClientWhere::Refuse => Err(Refusal::new(
            Reason::WhereNotAllowed,
            match &rule.where_template {
                Some(t) => format!(
                    "rule '{}' does not accept a where of the client's (its where is: {})",
                    rule.name, t.sql
                ),
                None => format!(
                    "rule '{}' does not accept a where of the client's",
                    rule.name
                ),
            },
        )),
        None => {
            check_client_params(client, &req.params)?;
            Ok((Some(client.clone()), req.params.clone()))
        }
        Some((sql, mut values)) => {
            check_client_params(client, &req.params)?;
            let offset = u32::try_from(values.len()).unwrap_or(u32::MAX);
            let combined = where_clause::and(&sql, client, offset)
                .map_err(|e| Refusal::new(Reason::BadRequest, format!("where: {e}")))?;
            for (n, v) in &req.params {
                values.insert(n.saturating_add(offset), v.clone());
            }
            Ok((Some(combined), values))
        }
    }
}

fn grant(rule: &Rule, claims: &Json, req: &ShapeRequest) -> Result<Grant, Refusal> {
    let columns = columns(rule, req.columns.as_deref())?;
    let replica = req.replica.unwrap_or(Replica::Default);
    if !rule.replica.contains(&replica) {
        return Err(Refusal::new(
            Reason::ReplicaNotAllowed,
            format!(
                "replica '{}' is not allowed (rule '{}' allows {})",
                replica.as_str(),
                rule.name,
                rule.replica
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let log = req.log.unwrap_or(LogMode::Full);
    if !rule.log.contains(&log) {
        return Err(Refusal::new(
            Reason::LogNotAllowed,
            format!(
                "log '{}' is not allowed (rule '{}' allows {})",
                log.as_str(),
                rule.name,
                rule.log
                    .iter()
                    .map(|l| l.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let (where_clause, params) = filter(rule, claims, req)?;
    Ok(Grant {
        rule: rule.name.clone(),
        namespace: rule.namespace.clone(),
        table: rule.table.clone(),
        where_clause,
        params,
        columns,
        replica,
        log,
        subsets: rule.subsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POLICY: &str = r#"
rules:
  - name: admins
    table: items
    when: [{ claim: roles, contains: admin }]
    replica: [default, full]
  - name: members
    table: items
    when: [{ claim: roles, contains: member }]
    where:
      sql: "owner_id = $1 AND org_id = $2"
      params: { 1: { claim: sub }, 2: { claim: org.id } }
    columns: [id, title, owner_id]
    log: full
  - name: strict
    table: Notes
    namespace: App
    where: { sql: "author = $1", params: { 1: { claim: sub } } }
    client_where: refuse
  - name: open
    table: public_posts
"#;

    fn policy() -> Policy {
        Policy::parse(POLICY).unwrap()
    }

    fn member() -> Json {
        json!({"sub": "alice", "roles": ["member"], "org": {"id": "acme"}})
    }

    fn req(table: &str) -> ShapeRequest {
        ShapeRequest {
            table: table.into(),
            ..Default::default()
        }
    }

    fn refused(claims: &Json, r: &ShapeRequest) -> Refusal {
        decide(&policy(), claims, r).unwrap_err()
    }

    #[test]
    fn first_rule_whose_conditions_hold_decides() {
        let admin = json!({"sub": "root", "roles": ["admin", "member"]});
        let g = decide(&policy(), &admin, &req("items")).unwrap();
        assert_eq!(g.rule, "admins");
        assert_eq!(g.where_clause, None);
        assert_eq!(g.columns, None);
        let g = decide(&policy(), &member(), &req("items")).unwrap();
        assert_eq!(g.rule, "members");
        assert_eq!(
            g.where_clause.as_deref(),
            Some("owner_id = $1 AND org_id = $2")
        );
        assert_eq!(
            g.params,
            BTreeMap::from([(1, "alice".into()), (2, "acme".into())])
        );
        assert_eq!(
            g.columns,
            Some(vec!["id".into(), "title".into(), "owner_id".into()])
        );
        assert_eq!((g.replica, g.log), (Replica::Default, LogMode::Full));
    }

    #[test]
    fn refusals_say_why() {
        let r = refused(&member(), &req("secrets"));
        assert_eq!(r.reason, Reason::TableNotCovered);
        assert_eq!(r.message, "no policy rule covers table secrets");
        let r = refused(&json!({"sub": "x", "roles": ["guest"]}), &req("items"));
        assert_eq!(r.reason, Reason::ConditionsNotMet);
        assert!(
            r.message
                .contains("rule 'admins': claim 'roles' contains 'admin' does not hold"),
            "{}",
            r.message
        );

        let mut q = req("items");
        q.columns = Some(vec!["id".into(), "salary".into()]);
        let r = refused(&member(), &q);
        assert_eq!(r.reason, Reason::ColumnNotAllowed);
        assert_eq!(
            r.message,
            "column 'salary' is not allowed (rule 'members' allows id, title, owner_id)"
        );

        let mut q = req("items");
        q.replica = Some(Replica::Full);
        assert_eq!(refused(&member(), &q).reason, Reason::ReplicaNotAllowed);
        let mut q = req("items");
        q.log = Some(LogMode::ChangesOnly);
        assert_eq!(refused(&member(), &q).reason, Reason::LogNotAllowed);

        // the policy's where needs org.id
        let r = refused(&json!({"sub": "bob", "roles": ["member"]}), &req("items"));
        assert_eq!(r.reason, Reason::ClaimMissing);
        assert!(
            r.message.contains("$2: the caller has no 'org.id' claim"),
            "{}",
            r.message
        );

        // a rule refusing client wheres
        let mut q = req("Notes");
        q.namespace = Some("App".into());
        q.where_clause = Some("true".into());
        let r = refused(&member(), &q);
        assert_eq!(r.reason, Reason::WhereNotAllowed);
        assert!(r.message.contains("author = $1"));
        // ... but its own where sent back is fine
        q.where_clause = Some("author = $1".into());
        let g = decide(&policy(), &member(), &q).unwrap();
        assert_eq!(g.params, BTreeMap::from([(1, "alice".into())]));
        assert_eq!(g.namespace.as_deref(), Some("App"));
        // ... with the policy's values only
        q.params = BTreeMap::from([(1, "bob".to_string())]);
        assert_eq!(refused(&member(), &q).reason, Reason::ParamsMismatch);
        q.params = BTreeMap::from([(1, "alice".to_string())]);
        assert!(decide(&policy(), &member(), &q).is_ok());
        q.params = BTreeMap::from([(1, "alice".to_string()), (2, "x".to_string())]);
        assert_eq!(refused(&member(), &q).reason, Reason::ParamsMismatch);
    }

    #[test]
    fn asking_for_less_is_narrowed() {
        let mut q = req("items");
        q.columns = Some(vec!["title".into(), "id".into()]);
        q.where_clause = Some("status = $1 OR status = $2".into());
        q.params = BTreeMap::from([(1, "open".into()), (2, "new".into())]);
        let g = decide(&policy(), &member(), &q).unwrap();
        assert_eq!(g.columns, Some(vec!["title".into(), "id".into()]));
        assert_eq!(
            g.where_clause.as_deref(),
            Some("(owner_id = $1 AND org_id = $2) AND (status = $3 OR status = $4)")
        );
        assert_eq!(
            g.params,
            BTreeMap::from([
                (1, "alice".into()),
                (2, "acme".into()),
                (3, "open".into()),
                (4, "new".into())
            ])
        );
        // a client's where where the rule has none is taken as is
        let mut q = req("public_posts");
        q.where_clause = Some("lang = $1".into());
        q.params = BTreeMap::from([(1, "en".into())]);
        let g = decide(&policy(), &member(), &q).unwrap();
        assert_eq!(g.where_clause.as_deref(), Some("lang = $1"));
        assert_eq!(g.params, BTreeMap::from([(1, "en".into())]));
    }

    #[test]
    fn client_where_cannot_widen() {
        let bad = |w: &str, params: &[(u32, &str)]| {
            let mut q = req("items");
            q.where_clause = Some(w.into());
            q.params = params.iter().map(|(n, v)| (*n, v.to_string())).collect();
            decide(&policy(), &member(), &q).unwrap_err()
        };
        let r = bad("true) OR (true", &[]);
        assert_eq!(r.reason, Reason::BadRequest);
        assert!(r.message.contains("closes a parenthesis"), "{}", r.message);
        assert_eq!(bad("true --", &[]).reason, Reason::BadRequest);
        assert_eq!(
            bad("a = $1", &[]).message,
            "where uses $1 but params[1] is not given"
        );
        assert_eq!(
            bad("a = 1", &[(1, "x")]).message,
            "params[1] is not used by where"
        );
        let mut q = req("items");
        q.params = BTreeMap::from([(1, "x".to_string())]);
        assert_eq!(
            decide(&policy(), &member(), &q).unwrap_err().message,
            "params are given without a where"
        );
        let mut q = req("items");
        q.columns = Some(vec![]);
        assert_eq!(
            decide(&policy(), &member(), &q).unwrap_err().reason,
            Reason::BadRequest
        );
        q.columns = Some(vec!["id".into(), "id".into()]);
        assert_eq!(
            decide(&policy(), &member(), &q).unwrap_err().reason,
            Reason::BadRequest
        );
    }

    #[test]
    fn raw_names_are_compared_raw() {
        let p = Policy::parse("rules:\n  - table: GkItems\n  - table: gk.split\n").unwrap();
        assert!(decide(&p, &member(), &req("GkItems")).is_ok());
        assert_eq!(
            decide(&p, &member(), &req("gkitems")).unwrap_err().message,
            "no policy rule covers table gkitems"
        );
        let g = decide(&p, &member(), &req("gk.split")).unwrap();
        assert_eq!((g.namespace, g.table.as_str()), (None, "gk.split"));
        let mut q = req("split");
        q.namespace = Some("gk".into());
        assert_eq!(
            decide(&p, &member(), &q).unwrap_err().reason,
            Reason::TableNotCovered
        );
    }
}
