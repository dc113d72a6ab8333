//! Electric's side of the contract: names in URLs, and the shapes a request asks for.
//!
//! Names are *raw* everywhere in the gatekeeper (a table called `GkItems` is `GkItems`, a
//! table called `gk.split` is `gk.split`), exactly as Electric's gatekeeper keeps them; they
//! are quoted only when written into the URL the client requests, the way Electric's client
//! does it (`Electric.Client.ShapeDefinition.url_table_name`).

use std::collections::BTreeMap;

/// `replica` of a shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Replica {
    Default,
    Full,
}

impl Replica {
    pub fn parse(s: &str) -> Option<Replica> {
        match s {
            "default" => Some(Replica::Default),
            "full" => Some(Replica::Full),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Replica::Default => "default",
            Replica::Full => "full",
        }
    }
}

/// `log` mode of a shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogMode {
    Full,
    ChangesOnly,
}

impl LogMode {
    pub fn parse(s: &str) -> Option<LogMode> {
        match s {
            "full" => Some(LogMode::Full),
            "changes_only" => Some(LogMode::ChangesOnly),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogMode::Full => "full",
            LogMode::ChangesOnly => "changes_only",
        }
    }
}

/// The shape a caller asks the gatekeeper for (raw names; `None`: not given).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShapeRequest {
    pub table: String,
    pub namespace: Option<String>,
    pub where_clause: Option<String>,
    /// `params[n]` by n.
    pub params: BTreeMap<u32, String>,
    pub columns: Option<Vec<String>>,
    pub replica: Option<Replica>,
    pub log: Option<LogMode>,
}

/// Whether Electric's client writes `name` into a URL as it is: lower-case letters, digits and
/// `_`, not starting with a digit (anything else is quoted).
fn plain(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A name as Electric's client writes it into a URL: verbatim when [`plain`], else in double
/// quotes with `"` doubled.
pub fn url_name(name: &str) -> String {
    if plain(name) {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The `table` query value for a raw schema and table: `url_table_name` of Electric's client
/// (the namespace folded in as `ns.table`).
pub fn url_table_name(namespace: Option<&str>, table: &str) -> String {
    match namespace {
        None => url_name(table),
        Some(ns) => format!("{}.{}", url_name(ns), url_name(table)),
    }
}

/// The `columns` query value for raw column names (each quoted as [`url_name`]).
pub fn url_columns(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| url_name(c))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_as_electric_writes_them() {
        assert_eq!(url_table_name(None, "items"), "items");
        assert_eq!(url_table_name(None, "my_table_2"), "my_table_2");
        assert_eq!(
            url_table_name(Some("my_app"), "my_table"),
            "my_app.my_table"
        );
        // Electric's own doctest
        assert_eq!(
            url_table_name(Some("my app"), "my table"),
            "\"my app\".\"my table\""
        );
        assert_eq!(url_table_name(None, "GkItems"), "\"GkItems\"");
        // a table whose name has a dot is one name, not schema.table
        assert_eq!(url_table_name(None, "gk.split"), "\"gk.split\"");
        assert_eq!(url_table_name(None, "say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(url_table_name(None, "1st"), "\"1st\"");
        assert_eq!(url_table_name(None, "ünï"), "\"ünï\"");
        assert_eq!(url_table_name(Some("Public"), "items"), "\"Public\".items");
    }

    #[test]
    fn columns_as_a_query_value() {
        let cols = vec!["id".to_string(), "Title".into(), "a,b".into()];
        assert_eq!(url_columns(&cols), "id,\"Title\",\"a,b\"");
    }

    #[test]
    fn enums() {
        assert_eq!(Replica::parse("full"), Some(Replica::Full));
        assert_eq!(Replica::parse("FULL"), None);
        assert_eq!(
            LogMode::parse("changes_only").map(LogMode::as_str),
            Some("changes_only")
        );
        assert_eq!(LogMode::parse("x"), None);
    }
}
