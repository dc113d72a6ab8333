//! PostgreSQL identifiers the way Electric reads them (`Electric.Postgres.Identifiers`):
//! unquoted names are letters/marks/digits/`_`/`$` (not starting with a digit) and are
//! downcased (ASCII only, as Postgres does in a multi-byte encoding); quoted names keep their
//! case and spelling with `""` standing for one `"`; at most 63 characters; a relation is
//! `name` or `schema.name` (a `.` inside quotes does not split), the schema defaulting to
//! `public`.

use std::fmt;

/// Postgres' NAMEDATALEN - 1.
pub const MAX_IDENTIFIER_CHARS: usize = 63;

/// Schema of a relation named without one.
pub const DEFAULT_SCHEMA: &str = "public";

/// Why an identifier was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentifierError {
    Empty,
    TooLong,
    /// An unquoted identifier with a character Postgres would not accept unquoted.
    InvalidUnquoted(String),
    /// A quoted identifier with a lone `"` inside.
    UnescapedQuote(String),
    /// `a.b.c`, or an unbalanced quote that leaves the split ambiguous.
    TooManyParts(String),
}

impl fmt::Display for IdentifierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentifierError::Empty => f.write_str("zero-length identifier"),
            IdentifierError::TooLong => {
                write!(
                    f,
                    "identifier longer than {MAX_IDENTIFIER_CHARS} characters"
                )
            }
            IdentifierError::InvalidUnquoted(s) => {
                write!(f, "unquoted identifier '{s}' contains special characters")
            }
            IdentifierError::UnescapedQuote(s) => {
                write!(f, "identifier '{s}' has an unescaped quote")
            }
            IdentifierError::TooManyParts(s) => {
                write!(f, "relation '{s}' has too many '.' delimiters")
            }
        }
    }
}

impl std::error::Error for IdentifierError {}

/// A relation: schema and table name, both canonical (unquoted, case as Postgres stores it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Relation {
    pub schema: String,
    pub name: String,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", quote(&self.schema), quote(&self.name))
    }
}

/// Quotes an identifier for display.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn is_unquoted_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_unquoted_rest(c: char) -> bool {
    // \pL \pM _ 0-9 $ ; alphanumeric() covers letters and digits, marks are rare in names and
    // are accepted through is_alphanumeric's Unicode tables only when they are letters, so we
    // accept general marks via the combining-character ranges below.
    c.is_alphabetic()
        || c.is_ascii_digit()
        || c == '_'
        || c == '$'
        || matches!(c, '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}' | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}')
}

/// Parses one identifier (quoted or not) to its canonical form.
pub fn parse_identifier(ident: &str) -> Result<String, IdentifierError> {
    let parsed = if ident.len() >= 2 && ident.starts_with('"') && ident.ends_with('"') {
        let inner = ident.get(1..ident.len() - 1).unwrap_or("");
        parse_quoted(inner)?
    } else {
        parse_unquoted(ident)?
    };
    if parsed.chars().count() > MAX_IDENTIFIER_CHARS {
        return Err(IdentifierError::TooLong);
    }
    Ok(parsed)
}

fn parse_quoted(inner: &str) -> Result<String, IdentifierError> {
    if inner.is_empty() {
        return Err(IdentifierError::Empty);
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            if chars.peek() == Some(&'"') {
                chars.next();
            } else {
                return Err(IdentifierError::UnescapedQuote(inner.to_string()));
            }
        }
        out.push(c);
    }
    Ok(out)
}

fn parse_unquoted(ident: &str) -> Result<String, IdentifierError> {
    let mut chars = ident.chars();
    match chars.next() {
        None => return Err(IdentifierError::Empty),
        Some(c) if !is_unquoted_start(c) => {
            return Err(IdentifierError::InvalidUnquoted(ident.to_string()))
        }
        Some(_) => {}
    }
    if !chars.all(is_unquoted_rest) {
        return Err(IdentifierError::InvalidUnquoted(ident.to_string()));
    }
    Ok(ident.to_ascii_lowercase())
}

/// Splits on `sep` where it is not inside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c == '"' {
            in_quotes = !in_quotes;
        } else if c == sep && !in_quotes {
            parts.push(s.get(start..i).unwrap_or(""));
            start = i + c.len_utf8();
        }
    }
    parts.push(s.get(start..).unwrap_or(""));
    parts
}

/// Parses `table` or `schema.table`.
pub fn parse_relation(s: &str) -> Result<Relation, IdentifierError> {
    match split_outside_quotes(s, '.').as_slice() {
        [name] => Ok(Relation {
            schema: DEFAULT_SCHEMA.to_string(),
            name: parse_identifier(name)?,
        }),
        [schema, name] => Ok(Relation {
            schema: parse_identifier(schema)?,
            name: parse_identifier(name)?,
        }),
        _ => Err(IdentifierError::TooManyParts(s.to_string())),
    }
}

/// Parses Electric's `columns` value: identifiers separated by commas outside quotes.
/// Returns them sorted and de-duplicated (the order of columns does not change a shape).
pub fn parse_columns(s: &str) -> Result<Vec<String>, IdentifierError> {
    let mut cols = split_outside_quotes(s, ',')
        .into_iter()
        .map(parse_identifier)
        .collect::<Result<Vec<_>, _>>()?;
    cols.sort();
    cols.dedup();
    Ok(cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn electric_examples() {
        assert_eq!(parse_identifier("FooBar").unwrap(), "foobar");
        assert_eq!(parse_identifier("\"FooBar\"").unwrap(), "FooBar");
        assert!(matches!(
            parse_identifier("Foo\"Bar\""),
            Err(IdentifierError::InvalidUnquoted(_))
        ));
        assert!(parse_identifier(" ").is_err());
        assert!(parse_identifier("foob@r").is_err());
        assert!(matches!(
            parse_identifier("\"Foo\"Bar\""),
            Err(IdentifierError::UnescapedQuote(_))
        ));
        assert_eq!(parse_identifier("\"\""), Err(IdentifierError::Empty));
        assert_eq!(parse_identifier(""), Err(IdentifierError::Empty));
        assert_eq!(
            parse_identifier(&"a".repeat(64)),
            Err(IdentifierError::TooLong)
        );
        assert_eq!(parse_identifier(&"a".repeat(63)).unwrap().len(), 63);
        assert_eq!(parse_identifier("\" \"").unwrap(), " ");
        assert_eq!(parse_identifier("\"Foo\"\"Bar\"").unwrap(), "Foo\"Bar");
        assert_eq!(parse_identifier("Ünïcode_$1").unwrap(), "Ünïcode_$1");
        assert!(parse_identifier("1abc").is_err());
    }

    #[test]
    fn relations() {
        let r = |s: &str, n: &str| Relation {
            schema: s.into(),
            name: n.into(),
        };
        assert_eq!(parse_relation("foo").unwrap(), r("public", "foo"));
        assert_eq!(parse_relation("foo.bar").unwrap(), r("foo", "bar"));
        assert_eq!(parse_relation("\"foo\".\"bar\"").unwrap(), r("foo", "bar"));
        assert_eq!(
            parse_relation("\"foo.woah\".\"bar\"").unwrap(),
            r("foo.woah", "bar")
        );
        assert_eq!(parse_relation("\"foo\".bar").unwrap(), r("foo", "bar"));
        assert_eq!(
            parse_relation("PUBLIC.Items").unwrap(),
            r("public", "items")
        );
        assert!(parse_relation("\"foo\".\"bar").is_err());
        assert!(matches!(
            parse_relation("foo.bar.baz"),
            Err(IdentifierError::TooManyParts(_))
        ));
        assert_eq!(parse_relation("public.items"), parse_relation("items"));
    }

    #[test]
    fn columns() {
        assert_eq!(parse_columns("id").unwrap(), vec!["id"]);
        assert_eq!(parse_columns("beta,alpha").unwrap(), vec!["alpha", "beta"]);
        assert_eq!(
            parse_columns("\"PoT@To\",PoTaTo").unwrap(),
            vec!["PoT@To", "potato"]
        );
        assert_eq!(
            parse_columns("\"PoTaTo,sunday\",foo").unwrap(),
            vec!["PoTaTo,sunday", "foo"]
        );
        assert_eq!(
            parse_columns("\"fo\"\"o\",bar").unwrap(),
            vec!["bar", "fo\"o"]
        );
        assert!(parse_columns("\"id,\"name\"").is_err());
        assert!(parse_columns("").is_err());
        assert!(parse_columns("foo,").is_err());
        assert!(parse_columns("a, b").is_err());
        assert_eq!(parse_columns("ID,id,\"id\"").unwrap(), vec!["id"]);
    }

    proptest! {
        #[test]
        fn quoting_round_trips(name in "\\PC{1,40}") {
            prop_assert_eq!(parse_identifier(&quote(&name)).unwrap(), name);
        }

        #[test]
        fn relation_display_round_trips(schema in "\\PC{1,20}", name in "\\PC{1,20}") {
            let rel = Relation { schema, name };
            prop_assert_eq!(parse_relation(&rel.to_string()).unwrap(), rel);
        }

        #[test]
        fn column_lists_are_order_insensitive(mut cols in proptest::collection::vec("[a-z_][a-z0-9_]{0,10}", 1..8)) {
            let a = parse_columns(&cols.join(",")).unwrap();
            cols.reverse();
            let upper: Vec<String> = cols.iter().map(|c| c.to_uppercase()).collect();
            prop_assert_eq!(&a, &parse_columns(&upper.join(",")).unwrap());
            let quoted: Vec<String> = cols.iter().map(|c| quote(c)).collect();
            prop_assert_eq!(&a, &parse_columns(&quoted.join(",")).unwrap());
        }

        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = parse_relation(&s);
            let _ = parse_columns(&s);
        }
    }
}
