//! The policy file: which shapes a caller may get, decided by rules, not code.
//!
//! ```yaml
//! rules:
//!   - name: admins-all-items          # optional; shown in logs and refusals
//!     table: items                    # raw name, exactly as in Postgres (GkItems, "gk.split")
//!     namespace: public               # optional raw schema; see Rule::covers
//!     when:                           # claim conditions, all must hold
//!       - { claim: roles, contains: admin }
//!     replica: [default, full]
//!   - table: items
//!     when: [{ claim: org_id, one_of: [acme, globex] }]
//!     where:
//!       sql: "owner_id = $1 AND org_id = $2"
//!       params:
//!         1: { claim: sub }
//!         2: { claim: org_id }
//!     columns: [id, title, owner_id, org_id]
//!     client_where: append            # or refuse
//! ...
//! ```
//!
//! A policy *file* ends with the line `...` ([`Policy::from_file_text`]): no cut of it is read.
//!
//! The file is parsed into a YAML tree and walked by hand so that every problem names its
//! field (`rules[2].where.params[1]: unknown claim source ...`). Before parsing, its size and
//! nesting depth are bounded (`edgeguard_yaml_guard`). Each rule is also minted once as a
//! sample shape claim and read back with jwt-shape's own claim reader, so a rule jwt-shape
//! could not bind is refused when the file loads, not when a caller asks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

use crate::electric::{LogMode, Replica};
use crate::shape_claim;
use crate::where_clause;

/// The largest policy file accepted (bytes), refused before parsing.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// One problem in the file, with the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A refused policy: every problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError(pub Vec<Issue>);

impl std::error::Error for PolicyError {}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.0.iter().take(10).map(ToString::to_string).collect();
        f.write_str(&shown.join("; "))?;
        if self.0.len() > 10 {
            write!(f, "; and {} more", self.0.len() - 10)?;
        }
        Ok(())
    }
}

/// Where a `$n` parameter of a rule's `where` gets its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamSource {
    /// A claim of the caller's token (dotted paths reach nested claims: `org.id`).
    Claim(String),
    /// A fixed value.
    Value(String),
}

/// A rule's `where` template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhereTemplate {
    pub sql: String,
    /// `$1 .. $n`, every one used by `sql`.
    pub params: BTreeMap<u32, ParamSource>,
}

/// What a claim condition tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Test {
    /// The claim is an array holding this value, or a string holding it as a space-separated
    /// word (OAuth's `scope`).
    Contains(String),
    /// The claim (a string, number or boolean) is this value.
    Equals(String),
    /// The claim (a string, number or boolean) is one of these values.
    OneOf(Vec<String>),
}

/// A condition on the caller's claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub claim: String,
    pub test: Test,
}

/// What a rule does with a client's own `where`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientWhere {
    /// Appended to the rule's with `AND` (it can only narrow).
    Append,
    /// Refused (403) unless it is the rule's own `where`.
    Refuse,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `name`, or `rules[<index>]`.
    pub name: String,
    pub table: String,
    pub namespace: Option<String>,
    pub when: Vec<Condition>,
    pub where_template: Option<WhereTemplate>,
    /// Columns the caller may get; `None`: all.
    pub columns: Option<Vec<String>>,
    pub replica: BTreeSet<Replica>,
    pub log: BTreeSet<LogMode>,
    pub client_where: ClientWhere,
    /// Subset snapshots allowed (`"subsets": true` in the claim).
    pub subsets: bool,
}

impl Rule {
    /// Whether the rule is about this table: the same raw table name, and the same namespace,
    /// or none asked (the rule's namespace then applies).
    pub fn covers(&self, namespace: Option<&str>, table: &str) -> bool {
        self.table == table && (namespace.is_none() || namespace == self.namespace.as_deref())
    }
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub rules: Vec<Rule>,
}

impl Test {
    fn describe(&self) -> String {
        match self {
            Test::Contains(v) => format!("contains '{v}'"),
            Test::Equals(v) => format!("equals '{v}'"),
            Test::OneOf(vs) => format!("is one of [{}]", vs.join(", ")),
        }
    }
}

/// A claim value as text, when it is a scalar.
pub fn scalar_text(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Condition {
    /// `Ok` when the caller's claims satisfy the condition, else why not.
    pub fn check(&self, claims: &Json) -> Result<(), String> {
        let value = edgeguard_verdict::token::claim_at(claims, &self.claim);
        let holds = match (&self.test, value) {
            (_, None | Some(Json::Null)) => false,
            (Test::Contains(want), Some(Json::Array(items))) => items
                .iter()
                .any(|i| scalar_text(i).as_deref() == Some(want.as_str())),
            (Test::Contains(want), Some(Json::String(s))) => {
                s.split_ascii_whitespace().any(|w| w == want)
            }
            (Test::Contains(_), Some(_)) => false,
            (Test::Equals(want), Some(v)) => scalar_text(v).as_deref() == Some(want.as_str()),
            (Test::OneOf(options), Some(v)) => scalar_text(v).is_some_and(|s| options.contains(&s)),
        };
        if holds {
            Ok(())
        } else {
            Err(format!(
                "claim '{}' {} does not hold",
                self.claim,
                self.test.describe()
            ))
        }
    }
}

impl ParamSource {
    /// The parameter's value for this caller; `Err` names the claim that is missing or not a
    /// scalar.
    pub fn resolve(&self, claims: &Json) -> Result<String, String> {
        match self {
            ParamSource::Value(v) => Ok(v.clone()),
            ParamSource::Claim(c) => match edgeguard_verdict::token::claim_at(claims, c) {
                None | Some(Json::Null) => Err(format!("the caller has no '{c}' claim")),
                Some(v) => scalar_text(v).ok_or_else(|| {
                    format!("the caller's '{c}' claim is not a string, number or boolean")
                }),
            },
        }
    }
}

/// Collects issues while walking the tree.
struct Walk {
    issues: Vec<Issue>,
}

impl Walk {
    fn issue(&mut self, path: impl Into<String>, message: impl fmt::Display) {
        self.issues.push(Issue {
            path: path.into(),
            message: message.to_string(),
        });
    }
}

fn kind(v: &Yaml) -> &'static str {
    match v {
        Yaml::Null => "null",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Tagged(_) => "a tagged value",
    }
}

fn key_text(k: &Yaml) -> Option<String> {
    match k {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A mapping's entries by text key; `None` (with an issue) when `v` is not a mapping or has
/// keys that are not scalars, or keys outside `allowed`.
fn mapping(w: &mut Walk, path: &str, v: &Yaml, allowed: &[&str]) -> Option<BTreeMap<String, Yaml>> {
    let Yaml::Mapping(m) = v else {
        w.issue(path, format!("expected a mapping, found {}", kind(v)));
        return None;
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, val) in m {
        let Some(key) = key_text(k) else {
            w.issue(path, format!("keys must be text, found {}", kind(k)));
            ok = false;
            continue;
        };
        if !allowed.is_empty() && !allowed.contains(&key.as_str()) {
            w.issue(
                join(path, &key),
                format!("unknown field (expected one of: {})", allowed.join(", ")),
            );
            ok = false;
            continue;
        }
        out.insert(key, val.clone());
    }
    ok.then_some(out)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn text(w: &mut Walk, path: &str, v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) if !s.is_empty() => Some(s.clone()),
        Yaml::String(_) => {
            w.issue(path, "must not be empty");
            None
        }
        other => {
            w.issue(path, format!("expected a string, found {}", kind(other)));
            None
        }
    }
}

/// A string, number or boolean, as text (conditions and fixed parameter values).
fn scalar(w: &mut Walk, path: &str, v: &Yaml) -> Option<String> {
    match key_text(v) {
        Some(s) if !matches!(v, Yaml::Sequence(_) | Yaml::Mapping(_)) => Some(s),
        _ => {
            w.issue(
                path,
                format!("expected a string, number or boolean, found {}", kind(v)),
            );
            None
        }
    }
}

/// A list of strings, or one string (`replica: full` ≡ `replica: [full]`).
fn strings(w: &mut Walk, path: &str, v: &Yaml, one_allowed: bool) -> Option<Vec<String>> {
    match v {
        Yaml::String(s) if one_allowed => Some(vec![s.clone()]),
        Yaml::Sequence(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                out.push(text(w, &format!("{path}[{i}]"), item)?);
            }
            Some(out)
        }
        other => {
            w.issue(
                path,
                format!("expected a list of strings, found {}", kind(other)),
            );
            None
        }
    }
}

fn param_index(key: &str) -> Option<u32> {
    if key.is_empty() || key.starts_with('0') || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse()
        .ok()
        .filter(|n| (1..=where_clause::MAX_PLACEHOLDER).contains(n))
}

fn param_source(w: &mut Walk, path: &str, v: &Yaml) -> Option<ParamSource> {
    const HINT: &str = "expected { claim: <claim name> } or { value: <fixed value> }";
    let Yaml::Mapping(m) = v else {
        w.issue(
            path,
            format!("unknown claim source: {HINT}, found {}", kind(v)),
        );
        return None;
    };
    let keys: Vec<Option<String>> = m.keys().map(key_text).collect();
    match keys.as_slice() {
        [Some(k)] if k == "claim" => {
            let name = text(w, &join(path, "claim"), m.values().next()?)?;
            Some(ParamSource::Claim(name))
        }
        [Some(k)] if k == "value" => {
            let value = scalar(w, &join(path, "value"), m.values().next()?)?;
            Some(ParamSource::Value(value))
        }
        _ => {
            let found: Vec<String> = keys.into_iter().map(|k| k.unwrap_or_default()).collect();
            w.issue(
                path,
                format!(
                    "unknown claim source: {HINT}, found keys [{}]",
                    found.join(", ")
                ),
            );
            None
        }
    }
}

fn where_template(w: &mut Walk, path: &str, v: &Yaml) -> Option<WhereTemplate> {
    let (sql, params_yaml) = match v {
        Yaml::String(_) => (text(w, path, v)?, None),
        Yaml::Mapping(_) => {
            let m = mapping(w, path, v, &["sql", "params"])?;
            let Some(sql) = m.get("sql") else {
                w.issue(join(path, "sql"), "required");
                return None;
            };
            (text(w, &join(path, "sql"), sql)?, m.get("params").cloned())
        }
        other => {
            w.issue(
                path,
                format!(
                    "expected a string or {{sql, params}}, found {}",
                    kind(other)
                ),
            );
            return None;
        }
    };
    let sql_path = if params_yaml.is_some() || matches!(v, Yaml::Mapping(_)) {
        join(path, "sql")
    } else {
        path.to_string()
    };
    let used = match where_clause::placeholders(&sql) {
        Ok(u) => u,
        Err(e) => {
            w.issue(sql_path, e);
            return None;
        }
    };
    let params_path = join(path, "params");
    let mut params = BTreeMap::new();
    let before = w.issues.len();
    if let Some(p) = &params_yaml {
        let m = mapping(w, &params_path, p, &[])?;
        for (k, source) in m {
            let entry = format!("{params_path}[{k}]");
            let Some(n) = param_index(&k) else {
                w.issue(
                    entry,
                    "parameter keys are 1, 2, ... (as $1, $2, ... in sql)",
                );
                continue;
            };
            if let Some(s) = param_source(w, &entry, &source) {
                params.insert(n, s);
            }
        }
    }
    if w.issues.len() > before {
        return None;
    }
    for n in &used {
        if !params.contains_key(n) {
            w.issue(
                &params_path,
                format!("${n} is used by sql but has no entry in params"),
            );
        }
    }
    for n in params.keys() {
        if !used.contains(n) {
            w.issue(
                format!("{params_path}[{n}]"),
                format!("${n} is not used by sql"),
            );
        }
    }
    let count = u32::try_from(params.len()).unwrap_or(u32::MAX);
    if params.keys().copied().ne(1..=count) {
        w.issue(
            &params_path,
            "parameters must be numbered $1, $2, ... without gaps",
        );
    }
    (w.issues.len() == before).then_some(WhereTemplate { sql, params })
}

fn condition(w: &mut Walk, path: &str, v: &Yaml) -> Option<Condition> {
    let m = mapping(w, path, v, &["claim", "contains", "equals", "one_of"])?;
    let Some(claim) = m.get("claim") else {
        w.issue(
            join(path, "claim"),
            "required: the claim the condition tests",
        );
        return None;
    };
    let claim = text(w, &join(path, "claim"), claim)?;
    let tests: Vec<&String> = m.keys().filter(|k| *k != "claim").collect();
    let [test] = tests.as_slice() else {
        w.issue(path, "needs exactly one of contains, equals, one_of");
        return None;
    };
    let value = m.get(test.as_str())?;
    let tpath = join(path, test);
    let test = match test.as_str() {
        "contains" => Test::Contains(scalar(w, &tpath, value)?),
        "equals" => Test::Equals(scalar(w, &tpath, value)?),
        _ => {
            let Yaml::Sequence(items) = value else {
                w.issue(tpath, format!("expected a list, found {}", kind(value)));
                return None;
            };
            let mut options = Vec::new();
            for (i, item) in items.iter().enumerate() {
                options.push(scalar(w, &format!("{tpath}[{i}]"), item)?);
            }
            if options.is_empty() {
                w.issue(tpath, "must not be empty");
                return None;
            }
            Test::OneOf(options)
        }
    };
    Some(Condition { claim, test })
}

const RULE_FIELDS: &[&str] = &[
    "name",
    "table",
    "namespace",
    "when",
    "where",
    "columns",
    "replica",
    "log",
    "client_where",
    "subsets",
];

fn rule(w: &mut Walk, index: usize, v: &Yaml) -> Option<Rule> {
    let path = format!("rules[{index}]");
    let m = mapping(w, &path, v, RULE_FIELDS)?;
    let before = w.issues.len();
    let field = |f: &str| join(&path, f);
    let name = match m.get("name") {
        Some(n) => text(w, &field("name"), n).unwrap_or_default(),
        None => path.clone(),
    };
    let table = match m.get("table") {
        Some(t) => text(w, &field("table"), t),
        None => {
            w.issue(field("table"), "required: the raw name of the table");
            None
        }
    };
    let namespace = m
        .get("namespace")
        .and_then(|n| text(w, &field("namespace"), n));
    let mut when = Vec::new();
    match m.get("when") {
        None => {}
        Some(Yaml::Sequence(items)) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(c) = condition(w, &format!("{}[{i}]", field("when")), item) {
                    when.push(c);
                }
            }
        }
        Some(other) => w.issue(
            field("when"),
            format!("expected a list of conditions, found {}", kind(other)),
        ),
    }
    let where_template = m
        .get("where")
        .and_then(|v| where_template(w, &field("where"), v));
    let columns = match m.get("columns") {
        None => None,
        Some(v) => match strings(w, &field("columns"), v, false) {
            Some(cols) if cols.is_empty() => {
                w.issue(
                    field("columns"),
                    "must not be empty (leave it out to allow all columns)",
                );
                None
            }
            Some(cols) => {
                let mut seen = BTreeSet::new();
                for c in &cols {
                    if !seen.insert(c) {
                        w.issue(field("columns"), format!("'{c}' is listed twice"));
                    }
                }
                Some(cols)
            }
            None => None,
        },
    };
    let replica = match m.get("replica") {
        None => BTreeSet::from([Replica::Default]),
        Some(v) => {
            let mut set = BTreeSet::new();
            for (i, s) in strings(w, &field("replica"), v, true)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                match Replica::parse(s) {
                    Some(r) => {
                        set.insert(r);
                    }
                    None => w.issue(
                        format!("{}[{i}]", field("replica")),
                        format!("'{s}' is not a replica mode (default, full)"),
                    ),
                }
            }
            set
        }
    };
    let log = match m.get("log") {
        None => BTreeSet::from([LogMode::Full, LogMode::ChangesOnly]),
        Some(v) => {
            let mut set = BTreeSet::new();
            for (i, s) in strings(w, &field("log"), v, true)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                match LogMode::parse(s) {
                    Some(l) => {
                        set.insert(l);
                    }
                    None => w.issue(
                        format!("{}[{i}]", field("log")),
                        format!("'{s}' is not a log mode (full, changes_only)"),
                    ),
                }
            }
            set
        }
    };
    for (f, set_empty) in [("replica", replica.is_empty()), ("log", log.is_empty())] {
        if set_empty && m.contains_key(f) && w.issues.len() == before {
            w.issue(field(f), "must allow at least one mode");
        }
    }
    let client_where = match m.get("client_where") {
        None => ClientWhere::Append,
        Some(Yaml::String(s)) if s == "append" => ClientWhere::Append,
        Some(Yaml::String(s)) if s == "refuse" => ClientWhere::Refuse,
        Some(other) => {
            w.issue(
                field("client_where"),
                format!("expected 'append' or 'refuse', found {}", describe(other)),
            );
            ClientWhere::Append
        }
    };
    let subsets = match m.get("subsets") {
        None => false,
        Some(Yaml::Bool(b)) => *b,
        Some(other) => {
            w.issue(
                field("subsets"),
                format!("expected true or false, found {}", kind(other)),
            );
            false
        }
    };
    let table = table?;
    if w.issues.len() > before {
        return None;
    }
    let rule = Rule {
        name,
        table,
        namespace,
        when,
        where_template,
        columns,
        replica,
        log,
        client_where,
        subsets,
    };
    // what this rule mints must be a claim jwt-shape reads
    if let Err((f, e)) = shape_claim::check_rule(&rule) {
        w.issue(field(f), format!("jwt-shape cannot bind it: {e}"));
        return None;
    }
    Some(rule)
}

fn describe(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => format!("'{s}'"),
        other => kind(other).to_string(),
    }
}

/// Whether the text's last line is YAML's document end marker `...`.
fn ends_with_document_end(text: &str) -> bool {
    text.trim_end().rsplit('\n').next().map(str::trim_end) == Some("...")
}

impl Policy {
    /// Reads a policy *file*: it must end with the line `...` (YAML's document end marker).
    /// A file cut short (read while being written, a truncated copy) lacks it, and a cut policy
    /// could grant more than the whole one (a rule that lost its `where` or `columns`), so it
    /// is refused, as `edgeguard authz`'s DB-less file is.
    pub fn from_file_text(text: &str) -> Result<Policy, PolicyError> {
        if !ends_with_document_end(text) {
            return Err(PolicyError(vec![Issue {
                path: String::new(),
                message: "the file must end with the line `...` (YAML's document end marker): a file cut short lacks it, and a cut policy could grant more than the whole one".into(),
            }]));
        }
        Policy::parse(text)
    }

    /// Parses and validates a policy's text.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let one = |message: String| {
            PolicyError(vec![Issue {
                path: String::new(),
                message,
            }])
        };
        edgeguard_yaml_guard::check_size(text.len() as u64, MAX_POLICY_BYTES)
            .map_err(|e| one(e.to_string()))?;
        edgeguard_yaml_guard::check_depth(text, edgeguard_yaml_guard::MAX_DEPTH)
            .map_err(|e| one(format!("invalid YAML: {e}")))?;
        let doc: Yaml =
            serde_yaml_ng::from_str(text).map_err(|e| one(format!("invalid YAML: {e}")))?;
        let mut w = Walk { issues: Vec::new() };
        let Some(top) = mapping(&mut w, "", &doc, &["rules"]) else {
            if w.issues.first().is_some_and(|i| i.path.is_empty()) {
                return Err(one(format!(
                    "expected a mapping with 'rules', found {}",
                    kind(&doc)
                )));
            }
            return Err(PolicyError(w.issues));
        };
        let mut rules = Vec::new();
        match top.get("rules") {
            Some(Yaml::Sequence(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(r) = rule(&mut w, i, item) {
                        rules.push(r);
                    }
                }
            }
            Some(other) => w.issue(
                "rules",
                format!("expected a list of rules, found {}", kind(other)),
            ),
            None => w.issue("rules", "required (an empty list refuses every request)"),
        }
        if !w.issues.is_empty() {
            return Err(PolicyError(w.issues));
        }
        Ok(Policy { rules })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues(text: &str) -> Vec<String> {
        match Policy::parse(text) {
            Ok(p) => panic!("accepted: {p:?}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const GOOD: &str = r#"
rules:
  - name: admins
    table: items
    when: [{ claim: roles, contains: admin }]
    replica: [default, full]
  - table: items
    namespace: public
    when:
      - { claim: org_id, one_of: [acme, 42] }
      - { claim: verified, equals: true }
    where:
      sql: "owner_id = $1 AND org_id = $2"
      params:
        1: { claim: sub }
        "2": { claim: org_id }
    columns: [id, title]
    log: full
    client_where: refuse
  - table: notes
    where: "public = true"
    subsets: true
"#;

    #[test]
    fn parses_a_good_policy() {
        let p = Policy::parse(GOOD).unwrap();
        assert_eq!(p.rules.len(), 3);
        let r = &p.rules[0];
        assert_eq!(r.name, "admins");
        assert_eq!(r.replica, BTreeSet::from([Replica::Default, Replica::Full]));
        assert_eq!(r.log, BTreeSet::from([LogMode::Full, LogMode::ChangesOnly]));
        assert_eq!(r.client_where, ClientWhere::Append);
        let r = &p.rules[1];
        assert_eq!(r.name, "rules[1]");
        assert_eq!(r.namespace.as_deref(), Some("public"));
        assert_eq!(
            r.when[0].test,
            Test::OneOf(vec!["acme".into(), "42".into()])
        );
        assert_eq!(r.when[1].test, Test::Equals("true".into()));
        let w = r.where_template.as_ref().unwrap();
        assert_eq!(w.params[&1], ParamSource::Claim("sub".into()));
        assert_eq!(w.params[&2], ParamSource::Claim("org_id".into()));
        assert_eq!(
            r.columns.as_deref(),
            Some(&["id".to_string(), "title".into()][..])
        );
        assert_eq!(r.replica, BTreeSet::from([Replica::Default]));
        assert_eq!(r.log, BTreeSet::from([LogMode::Full]));
        assert_eq!(r.client_where, ClientWhere::Refuse);
        assert_eq!(p.rules[2].where_template.as_ref().unwrap().params.len(), 0);
        assert!(p.rules[2].subsets);
    }

    #[test]
    fn every_problem_names_its_field() {
        let cases: Vec<(&str, &str)> = vec![
            (
                "rules:\n  - table: t\n  - table: t\n  - table: t\n    where:\n      sql: \"a = $1\"\n      params:\n        1: { header: x-user }\n",
                "rules[2].where.params[1]: unknown claim source: expected { claim: <claim name> } or { value: <fixed value> }, found keys [header]",
            ),
            ("rules:\n  - table: t\n    where: { sql: \"a = $1\" }\n", "rules[0].where.params: $1 is used by sql but has no entry in params"),
            (
                "rules:\n  - table: t\n    where: { sql: \"a = $1\", params: { 1: { claim: sub }, 2: { value: x } } }\n",
                "rules[0].where.params[2]: $2 is not used by sql",
            ),
            (
                "rules:\n  - table: t\n    where: { sql: \"a = $2\", params: { 2: { claim: sub } } }\n",
                "rules[0].where.params: parameters must be numbered $1, $2, ... without gaps",
            ),
            ("rules:\n  - table: t\n    where: { sql: \"a = $1\", params: { 0: { claim: sub } } }\n", "rules[0].where.params[0]: parameter keys are 1, 2, ..."),
            ("rules:\n  - table: t\n    where: \"true) OR (true\"\n", "rules[0].where: the where clause closes a parenthesis it did not open (byte 4)"),
            ("rules:\n  - table: t\n    where: { sql: \"x --\" }\n", "rules[0].where.sql: comments are not accepted in a where clause"),
            ("rules:\n  - table: t\n    colums: [a]\n", "rules[0].colums: unknown field (expected one of: name, table, namespace, when, where, columns, replica, log, client_where, subsets)"),
            ("rules:\n  - namespace: x\n", "rules[0].table: required: the raw name of the table"),
            ("rules:\n  - table: \"\"\n", "rules[0].table: must not be empty"),
            ("rules:\n  - table: [a]\n", "rules[0].table: expected a string, found a list"),
            ("rules:\n  - table: t\n    replica: [full, partial]\n", "rules[0].replica[1]: 'partial' is not a replica mode (default, full)"),
            ("rules:\n  - table: t\n    log: [all]\n", "rules[0].log[0]: 'all' is not a log mode (full, changes_only)"),
            ("rules:\n  - table: t\n    replica: []\n", "rules[0].replica: must allow at least one mode"),
            ("rules:\n  - table: t\n    columns: []\n", "rules[0].columns: must not be empty (leave it out to allow all columns)"),
            ("rules:\n  - table: t\n    columns: [a, b, a]\n", "rules[0].columns: 'a' is listed twice"),
            ("rules:\n  - table: t\n    when: [{ claim: roles }]\n", "rules[0].when[0]: needs exactly one of contains, equals, one_of"),
            ("rules:\n  - table: t\n    when: [{ claim: roles, contains: a, equals: b }]\n", "rules[0].when[0]: needs exactly one of contains, equals, one_of"),
            ("rules:\n  - table: t\n    when: [{ contains: admin }]\n", "rules[0].when[0].claim: required: the claim the condition tests"),
            ("rules:\n  - table: t\n    when: [{ claim: r, one_of: [] }]\n", "rules[0].when[0].one_of: must not be empty"),
            ("rules:\n  - table: t\n    when: [{ claim: r, one_of: x }]\n", "rules[0].when[0].one_of: expected a list, found a string"),
            ("rules:\n  - table: t\n    when: [{ claim: r, equals: [x] }]\n", "rules[0].when[0].equals: expected a string, number or boolean, found a list"),
            ("rules:\n  - table: t\n    when: { claim: r }\n", "rules[0].when: expected a list of conditions, found a mapping"),
            ("rules:\n  - table: t\n    client_where: maybe\n", "rules[0].client_where: expected 'append' or 'refuse', found 'maybe'"),
            ("rules:\n  - table: t\n    subsets: yes\n", "rules[0].subsets: expected true or false, found a string"),
            ("rules: {}\n", "rules: expected a list of rules, found a mapping"),
            ("{}\n", "rules: required (an empty list refuses every request)"),
            ("rulez: []\n", "rulez: unknown field (expected one of: rules)"),
            ("- a\n", "expected a mapping with 'rules', found a list"),
        ];
        for (text, want) in cases {
            let got = issues(text);
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "{text:?}\nwant: {want}\ngot:  {got:?}"
            );
        }
    }

    #[test]
    fn every_issue_is_reported_at_once() {
        let got = issues("rules:\n  - table: t\n    replica: [x]\n  - namespace: n\n  - table: u\n    log: [y]\n");
        assert_eq!(got.len(), 3, "{got:?}");
    }

    #[test]
    fn hostile_files_are_refused_before_parsing() {
        let deep = format!("rules: {}", "[".repeat(100_000));
        let e = Policy::parse(&deep).unwrap_err().to_string();
        assert!(e.contains("nested more than 64 levels deep"), "{e}");
        let big = format!("rules: []\n#{}\n", "x".repeat(MAX_POLICY_BYTES as usize));
        let e = Policy::parse(&big).unwrap_err().to_string();
        assert!(e.contains("more than the limit"), "{e}");
        let e = Policy::parse("rules: [ {table: t").unwrap_err().to_string();
        assert!(e.starts_with("invalid YAML"), "{e}");
    }

    #[test]
    fn conditions() {
        let claims = json!({"sub": "u1", "roles": ["admin", "dev"], "scope": "read write", "org": {"id": 7}, "ok": true, "nothing": null});
        let c = |claim: &str, test: Test| Condition {
            claim: claim.into(),
            test,
        };
        assert!(c("roles", Test::Contains("admin".into()))
            .check(&claims)
            .is_ok());
        assert!(c("roles", Test::Contains("root".into()))
            .check(&claims)
            .is_err());
        assert!(c("scope", Test::Contains("write".into()))
            .check(&claims)
            .is_ok());
        assert!(c("scope", Test::Contains("rite".into()))
            .check(&claims)
            .is_err());
        assert!(c("org.id", Test::Equals("7".into())).check(&claims).is_ok());
        assert!(c("ok", Test::Equals("true".into())).check(&claims).is_ok());
        assert!(c("sub", Test::OneOf(vec!["u2".into(), "u1".into()]))
            .check(&claims)
            .is_ok());
        assert!(c("roles", Test::Equals("admin".into()))
            .check(&claims)
            .is_err());
        assert!(c("org", Test::OneOf(vec!["7".into()]))
            .check(&claims)
            .is_err());
        assert!(c("missing", Test::Equals("x".into()))
            .check(&claims)
            .is_err());
        let e = c("nothing", Test::Contains("x".into()))
            .check(&claims)
            .unwrap_err();
        assert_eq!(e, "claim 'nothing' contains 'x' does not hold");
    }

    #[test]
    fn param_sources() {
        let claims = json!({"sub": "u1", "n": 5, "list": [1], "org": {"id": "o"}});
        assert_eq!(
            ParamSource::Claim("sub".into()).resolve(&claims).unwrap(),
            "u1"
        );
        assert_eq!(
            ParamSource::Claim("n".into()).resolve(&claims).unwrap(),
            "5"
        );
        assert_eq!(
            ParamSource::Claim("org.id".into())
                .resolve(&claims)
                .unwrap(),
            "o"
        );
        assert_eq!(
            ParamSource::Value("v".into()).resolve(&claims).unwrap(),
            "v"
        );
        assert!(ParamSource::Claim("list".into())
            .resolve(&claims)
            .unwrap_err()
            .contains("not a string"));
        assert!(ParamSource::Claim("nope".into())
            .resolve(&claims)
            .unwrap_err()
            .contains("no 'nope' claim"));
    }

    /// The policy shipped in the Kubernetes manifest (a ConfigMap) is one the gatekeeper loads.
    #[test]
    fn the_shipped_kubernetes_policy_loads() {
        let manifest = include_str!("../../../istio/kubernetes/gatekeeper.yaml");
        let policy = serde_yaml_ng::Deserializer::from_str(manifest)
            .filter_map(|doc| <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc).ok())
            .find(|doc| doc["kind"].as_str() == Some("ConfigMap"))
            .and_then(|cm| cm["data"]["policy.yaml"].as_str().map(str::to_string))
            .expect("the ConfigMap's policy.yaml");
        let p = Policy::from_file_text(&policy).unwrap();
        assert_eq!(p.rules.len(), 2);
    }

    #[test]
    fn a_file_must_end_with_the_document_end_marker_so_no_cut_of_it_is_read() {
        let demo = include_str!("../../../envoy/demo/gatekeeper-policy.yaml");
        let whole = Policy::from_file_text(demo).unwrap();
        assert_eq!(whole.rules.len(), 2);
        assert!(Policy::from_file_text("rules:\n  - table: t\n...\n").is_ok());
        assert!(Policy::from_file_text("rules:\n  - table: t\n...").is_ok());
        assert!(Policy::from_file_text("rules:\r\n  - table: t\r\n...\r\n").is_ok());
        let e = Policy::from_file_text("rules:\n  - table: t\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("the file must end with the line `...`"),
            "{e}"
        );
        // cut anywhere (a byte, a line, inside the marker): refused, never a broader policy
        for cut in 0..demo.trim_end().len() {
            let Some(prefix) = demo.get(..cut) else {
                continue;
            };
            assert!(
                Policy::from_file_text(prefix).is_err(),
                "a cut at byte {cut} was read:\n{prefix}"
            );
        }
        // a second document after the marker is refused too
        assert!(Policy::from_file_text("rules: []\n...\nrules: []\n...\n").is_err());
    }

    #[test]
    fn covers_tables_by_raw_name_and_namespace() {
        let p = Policy::parse("rules:\n  - table: GkItems\n  - table: items\n    namespace: app\n")
            .unwrap();
        assert!(p.rules[0].covers(None, "GkItems"));
        assert!(!p.rules[0].covers(None, "gkitems"));
        assert!(!p.rules[0].covers(Some("public"), "GkItems"));
        assert!(p.rules[1].covers(None, "items"));
        assert!(p.rules[1].covers(Some("app"), "items"));
        assert!(!p.rules[1].covers(Some("App"), "items"));
    }
}
