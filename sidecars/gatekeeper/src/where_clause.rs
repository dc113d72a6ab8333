//! `where` clauses: the `$n` placeholders they use, and the two operations the gatekeeper
//! performs on them: renumbering a client's placeholders and appending a client's clause to
//! the policy's with `AND`.
//!
//! A clause is lexed the way Postgres lexes SQL, far enough to know what is code and what is
//! text: standard strings (`'it''s'`), escape strings (`E'it\'s'`), quoted identifiers
//! (`"Mixed ""Case"""`), identifiers (which may contain `$`: `a$1` is a name, not a
//! placeholder), numbers and placeholders (`$1`). Everything the gatekeeper combines must be
//! one balanced expression, so that `(<policy>) AND (<client>)` is exactly "both hold":
//! parentheses outside text must balance and never close more than they opened, and the
//! constructs that could hide code from this lexer or cut the combined clause short are
//! refused: comments (`--`, `/* */`), `;`, dollar-quoted strings (`$tag$...$tag$`), NUL bytes
//! and unterminated text.

use std::collections::BTreeSet;
use std::fmt;

/// The longest clause accepted (bytes).
pub const MAX_WHERE_BYTES: usize = 16 * 1024;

/// The highest placeholder number accepted.
pub const MAX_PLACEHOLDER: u32 = 1000;

/// Why a clause was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WhereError {
    Empty,
    TooLong,
    UnterminatedString,
    UnterminatedIdentifier,
    /// A `)` closing more than was opened, at this byte offset.
    UnbalancedClose(usize),
    /// Parentheses left open at the end.
    UnbalancedOpen,
    Comment,
    Semicolon,
    DollarQuote,
    Nul,
    /// `$0`, or a number above [`MAX_PLACEHOLDER`].
    BadPlaceholder(String),
}

impl fmt::Display for WhereError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WhereError::Empty => f.write_str("the where clause is empty"),
            WhereError::TooLong => write!(f, "the where clause is longer than {MAX_WHERE_BYTES} bytes"),
            WhereError::UnterminatedString => f.write_str("the where clause has an unterminated string"),
            WhereError::UnterminatedIdentifier => {
                f.write_str("the where clause has an unterminated quoted identifier")
            }
            WhereError::UnbalancedClose(at) => {
                write!(f, "the where clause closes a parenthesis it did not open (byte {at})")
            }
            WhereError::UnbalancedOpen => f.write_str("the where clause leaves a parenthesis open"),
            WhereError::Comment => f.write_str("comments are not accepted in a where clause"),
            WhereError::Semicolon => f.write_str("';' is not accepted in a where clause"),
            WhereError::DollarQuote => f.write_str(
                "dollar-quoted strings are not accepted in a where clause (use '...' strings or $n parameters)",
            ),
            WhereError::Nul => f.write_str("the where clause contains a NUL character"),
            WhereError::BadPlaceholder(p) => write!(
                f,
                "placeholder '{p}' is not valid (placeholders are $1 .. ${MAX_PLACEHOLDER})"
            ),
        }
    }
}

impl std::error::Error for WhereError {}

/// A placeholder found in a clause: its byte span and number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Placeholder {
    start: usize,
    end: usize,
    n: u32,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn is_ident_cont(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == '$'
}

/// Lexes `sql`, checking it is one balanced expression, and returns its placeholders.
fn lex(sql: &str) -> Result<Vec<Placeholder>, WhereError> {
    if sql.len() > MAX_WHERE_BYTES {
        return Err(WhereError::TooLong);
    }
    if sql.trim().is_empty() {
        return Err(WhereError::Empty);
    }
    let chars: Vec<(usize, char)> = sql.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|(_, c)| *c);
    let offset = |i: usize| chars.get(i).map_or(sql.len(), |(o, _)| *o);
    let mut found = Vec::new();
    let mut depth: usize = 0;
    let mut i = 0;
    while let Some(c) = at(i) {
        match c {
            '\0' => return Err(WhereError::Nul),
            '\'' => i = skip_string(&chars, i + 1, false)?,
            'E' | 'e' if at(i + 1) == Some('\'') => i = skip_string(&chars, i + 2, true)?,
            '"' => {
                i += 1;
                loop {
                    match at(i) {
                        None => return Err(WhereError::UnterminatedIdentifier),
                        Some('\0') => return Err(WhereError::Nul),
                        Some('"') if at(i + 1) == Some('"') => i += 2,
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            '$' => match at(i + 1) {
                Some(d) if d.is_ascii_digit() => {
                    let start = offset(i);
                    let mut j = i + 1;
                    while at(j).is_some_and(|c| c.is_ascii_digit()) {
                        j += 1;
                    }
                    let end = offset(j);
                    let text = sql.get(start..end).unwrap_or_default();
                    let n = text
                        .get(1..)
                        .and_then(|d| d.parse::<u32>().ok())
                        .filter(|n| (1..=MAX_PLACEHOLDER).contains(n))
                        .ok_or_else(|| WhereError::BadPlaceholder(text.to_string()))?;
                    found.push(Placeholder { start, end, n });
                    i = j;
                }
                _ => return Err(WhereError::DollarQuote),
            },
            c if is_ident_start(c) => {
                i += 1;
                while at(i).is_some_and(is_ident_cont) {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() => {
                i += 1;
                while at(i).is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_') {
                    i += 1;
                }
            }
            '(' => {
                depth += 1;
                i += 1;
            }
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or(WhereError::UnbalancedClose(offset(i)))?;
                i += 1;
            }
            '-' if at(i + 1) == Some('-') => return Err(WhereError::Comment),
            '/' if at(i + 1) == Some('*') => return Err(WhereError::Comment),
            ';' => return Err(WhereError::Semicolon),
            _ => i += 1,
        }
    }
    if depth != 0 {
        return Err(WhereError::UnbalancedOpen);
    }
    Ok(found)
}

/// Skips a string body starting at `i` (just after the opening quote); returns the index
/// after the closing quote. `escapes`: backslash escapes the next character (`E'...'`).
fn skip_string(chars: &[(usize, char)], mut i: usize, escapes: bool) -> Result<usize, WhereError> {
    let at = |i: usize| chars.get(i).map(|(_, c)| *c);
    loop {
        match at(i) {
            None => return Err(WhereError::UnterminatedString),
            Some('\0') => return Err(WhereError::Nul),
            Some('\\') if escapes => {
                if at(i + 1).is_none() {
                    return Err(WhereError::UnterminatedString);
                }
                i += 2;
            }
            Some('\'') if at(i + 1) == Some('\'') => i += 2,
            Some('\'') => return Ok(i + 1),
            Some(_) => i += 1,
        }
    }
}

/// The placeholders a clause uses (checking that it is one balanced expression).
pub fn placeholders(sql: &str) -> Result<BTreeSet<u32>, WhereError> {
    Ok(lex(sql)?.into_iter().map(|p| p.n).collect())
}

/// `sql` with every placeholder `$n` written as `$(n + by)`.
pub fn renumber(sql: &str, by: u32) -> Result<String, WhereError> {
    let found = lex(sql)?;
    let mut out = String::with_capacity(sql.len() + found.len() * 2);
    let mut last = 0;
    for p in found {
        out.push_str(sql.get(last..p.start).unwrap_or_default());
        out.push('$');
        out.push_str(&(p.n.saturating_add(by)).to_string());
        last = p.end;
    }
    out.push_str(sql.get(last..).unwrap_or_default());
    Ok(out)
}

/// `(<policy>) AND (<client>)`, the client's placeholders renumbered after the policy's
/// `policy_params` parameters. Both clauses are checked.
pub fn and(policy: &str, client: &str, policy_params: u32) -> Result<String, WhereError> {
    lex(policy)?;
    let client = renumber(client, policy_params)?;
    Ok(format!("({policy}) AND ({client})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn finds_placeholders_outside_text() {
        assert_eq!(placeholders("owner_id = $1").unwrap(), set(&[1]));
        assert_eq!(
            placeholders("a = $1 AND (b = $2 OR c IN ($3, $1))").unwrap(),
            set(&[1, 2, 3])
        );
        // in text, in a quoted identifier, or inside a name, `$1` is not a placeholder
        assert_eq!(placeholders("a = '$1'").unwrap(), set(&[]));
        assert_eq!(placeholders("a = 'it''s $2'").unwrap(), set(&[]));
        assert_eq!(placeholders("\"col$1\" = 1").unwrap(), set(&[]));
        assert_eq!(placeholders("a$1 = 1").unwrap(), set(&[]));
        assert_eq!(placeholders("a = E'\\' $1'").unwrap(), set(&[]));
        assert_eq!(placeholders("a = E'x' AND b = $3").unwrap(), set(&[3]));
        assert_eq!(
            placeholders("name = 'ünï' AND $12 > 0").unwrap(),
            set(&[12])
        );
        assert_eq!(placeholders("a::text = $1::text").unwrap(), set(&[1]));
    }

    #[test]
    fn refuses_what_could_escape_the_parentheses() {
        let cases: Vec<(&str, WhereError)> = vec![
            ("", WhereError::Empty),
            ("   ", WhereError::Empty),
            ("true) OR (true", WhereError::UnbalancedClose(4)),
            ("(true", WhereError::UnbalancedOpen),
            ("a = 'open", WhereError::UnterminatedString),
            ("a = E'\\'", WhereError::UnterminatedString),
            ("\"open = 1", WhereError::UnterminatedIdentifier),
            ("true --", WhereError::Comment),
            ("true /* x */", WhereError::Comment),
            ("true; drop table x", WhereError::Semicolon),
            ("a = $$x$$", WhereError::DollarQuote),
            ("a = $tag$x$tag$", WhereError::DollarQuote),
            ("a = $0", WhereError::BadPlaceholder("$0".into())),
            (
                "a = $99999999999",
                WhereError::BadPlaceholder("$99999999999".into()),
            ),
            ("a = 'x\0'", WhereError::Nul),
        ];
        for (sql, err) in cases {
            assert_eq!(placeholders(sql), Err(err), "{sql:?}");
        }
        assert_eq!(
            placeholders(&"a".repeat(MAX_WHERE_BYTES + 1)),
            Err(WhereError::TooLong)
        );
        // a standard string does not treat a backslash as an escape (standard_conforming_strings)
        assert_eq!(placeholders("a = '\\' AND b = $1").unwrap(), set(&[1]));
        // an escape string hides a quote behind a backslash: the `)` below is text
        assert_eq!(placeholders("a = E'\\') OR (true'").unwrap(), set(&[]));
        // ... and a doubled quote in an escape string too
        assert!(placeholders("a = E'x'' ) OR (true --'").is_ok());
        // operators that start like comments but are not
        assert!(placeholders("a - -1 = b / 2").is_ok());
    }

    #[test]
    fn renumbers_only_placeholders() {
        assert_eq!(
            renumber("a = $1 AND b = '$1' AND c$1 = $2", 2).unwrap(),
            "a = $3 AND b = '$1' AND c$1 = $4"
        );
        assert_eq!(renumber("x = 1", 5).unwrap(), "x = 1");
        assert_eq!(renumber("ä = $1", 1).unwrap(), "ä = $2");
    }

    #[test]
    fn combines_with_and() {
        assert_eq!(
            and("owner_id = $1", "status = $1 OR status = $2", 1).unwrap(),
            "(owner_id = $1) AND (status = $2 OR status = $3)"
        );
        assert_eq!(and("true", "a = $1", 0).unwrap(), "(true) AND (a = $1)");
        assert!(and("owner_id = $1", "true) OR (true", 1).is_err());
    }

    proptest! {
        /// Whatever a client sends, if it is accepted the combined clause keeps the policy's
        /// clause as a conjunct: the parentheses around the client part balance at every
        /// prefix, so nothing the client wrote can close the policy's group.
        #[test]
        fn accepted_clauses_stay_inside_their_parentheses(client in "[a-z$0-9 ()'\"E\\\\=-]{0,40}") {
            if let Ok(combined) = and("owner_id = $1", &client, 1) {
                let inner = &combined["(owner_id = $1) AND (".len()..combined.len() - 1];
                prop_assert!(placeholders(inner).is_ok());
                prop_assert!(placeholders(&combined).is_ok());
                prop_assert!(combined.starts_with("(owner_id = $1) AND ("));
            }
        }

        #[test]
        fn lexing_never_panics(s in "\\PC{0,60}") {
            let _ = placeholders(&s);
            let _ = renumber(&s, 3);
        }
    }
}
