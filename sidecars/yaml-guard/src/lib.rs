//! Bounds on YAML input, checked *before* it reaches serde_yaml_ng.
//!
//! serde_yaml_ng refuses documents nested deeper than 128 levels, but only after its scanner
//! (libyaml's) has tokenised them, and that scanner does work proportional to the nesting
//! depth for every token while a simple key is possible: 100,000 `[` on one line after
//! `apps: ` take 23 s, `{a: ` × 100,000 a minute, blocking a reload. This crate bounds the
//! size of a file ([`read_limited`]) and its nesting depth ([`check_depth`]) with a linear
//! pre-scan, so such a file is refused at once with a clear error.
//!
//! # The depth pre-scan
//!
//! [`depth_bound`] follows libyaml's tokenisation closely enough to never count *less* than
//! the real nesting of any part of a file that libyaml would scan without stopping at an
//! error: block collections as libyaml's indentation stack opens them (a key's column when
//! its `:` comes, a `- ` entry's column, a sequence at the same column as the key holding it
//! as a level of its own, compact forms `- - x` and `- key: v` level by level), and flow
//! collections outside quoted scalars, comments and block scalars, a flow sequence as two
//! levels (any entry may be a single-pair mapping, `[a: b]`, known only after its key) and
//! one more where it may be the key of a block mapping (`{a: b}: c`), so it may count *more*
//! than the real depth, never less. Skipped text is only what libyaml treats as text too: quoted
//! scalars (multi-line, `''` and `\"` escapes), comments (`#` at a token or after a blank),
//! block scalar content (lines indented past the parent, as libyaml detects them), the
//! continuation lines of a multi-line plain scalar, and tag/anchor names. Line breaks are
//! libyaml's (`\n`, `\r\n`, `\r`, NEL, LS, PS).

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The nesting depth edgeguard's YAML files may have (the store's files need 3, the xds
/// file about 8; serde_yaml_ng itself stops at 128).
pub const MAX_DEPTH: usize = 64;

/// Why a YAML file was refused before parsing.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("the file is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error(
        "nested more than {limit} levels deep at line {line} column {column} (refused before parsing)"
    )]
    TooDeep {
        limit: usize,
        line: usize,
        column: usize,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Refuses a size over `limit` bytes.
pub fn check_size(size: u64, limit: u64) -> Result<(), LimitError> {
    if size > limit {
        return Err(LimitError::TooLarge { size, limit });
    }
    Ok(())
}

/// Reads a file of at most `limit` bytes: refused from its size before reading, and while
/// reading if it grew past the limit meanwhile.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, LimitError> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    check_size(size, limit)?;
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit.saturating_add(1)).read_to_end(&mut buf)?;
    check_size(buf.len() as u64, limit)?;
    Ok(buf)
}

/// Refuses a document nested more than `limit` levels deep (see the crate docs).
pub fn check_depth(text: &str, limit: usize) -> Result<(), LimitError> {
    let mut s = Scanner::new(limit);
    s.run(text.as_bytes())
        .map(|_| ())
        .map_err(|(line, column)| LimitError::TooDeep {
            limit,
            line,
            column,
        })
}

/// An upper bound of the nesting depth of `text` (for tests and diagnostics).
pub fn depth_bound(text: &str) -> usize {
    let mut s = Scanner::new(usize::MAX);
    s.run(text.as_bytes()).unwrap_or(usize::MAX)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A block sequence (its entries start with `- ` at this column).
    Seq,
    /// A block mapping (its keys start at this column).
    Map,
}

/// A block scalar (`|`, `>`) being skipped.
#[derive(Clone, Copy, Debug)]
struct BlockScalar {
    /// Column of the enclosing block collection (`None`: top level).
    parent: Option<usize>,
    /// Indentation of its content, once known.
    indent: Option<usize>,
}

/// Mirrors libyaml's scanner: its indentation stack (one entry per open block collection,
/// plus the sequences written at their key's column, which libyaml tracks in the parser)
/// and its flow level; everything libyaml reads as text is skipped.
struct Scanner {
    limit: usize,
    /// Open block collections: (column, kind), innermost last.
    indents: Vec<(usize, Kind)>,
    /// Open flow collections, counted in levels: a sequence counts two (any of its entries
    /// may be a single-pair mapping, `[a: b]`, whose key comes before the `:` says so), a
    /// mapping one.
    flow: usize,
    /// The levels each open flow collection counts for, innermost last.
    flows: Vec<usize>,
    /// Block context: a simple key may start at the next token (line start, after `-`,
    /// `?`, `:`), and the column where the current one started.
    key_allowed: bool,
    key_start: Option<usize>,
    /// Inside a quoted scalar continuing on the next line.
    quote: Option<u8>,
    block: Option<BlockScalar>,
    /// A block-context plain scalar ran to the end of the line and may continue: the column
    /// of its enclosing block collection (`Some(None)`: top level, every line continues it).
    plain: Option<Option<usize>>,
    /// Flow context, carried across lines: inside a plain scalar (else at a token).
    in_plain: bool,
    line: usize,
    max: usize,
}

type Deep = (usize, usize);

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn blank_or_end(line: &[u8], i: usize) -> bool {
    line.get(i).is_none_or(|b| is_blank(*b))
}

fn is_flow_indicator(b: u8) -> bool {
    matches!(b, b',' | b'[' | b']' | b'{' | b'}')
}

/// The index after the quote closing a scalar opened before `from`, if on this line.
fn close_quote(line: &[u8], from: usize, q: u8) -> Option<usize> {
    let mut j = from;
    while let Some(&b) = line.get(j) {
        if q == b'\'' {
            if b == b'\'' {
                if line.get(j + 1) == Some(&b'\'') {
                    j += 2;
                    continue;
                }
                return Some(j + 1);
            }
        } else if b == b'\\' {
            j += 2;
            continue;
        } else if b == b'"' {
            return Some(j + 1);
        }
        j += 1;
    }
    None
}

/// Skips an anchor, alias or tag starting at `i`: an anchor or alias name is letters,
/// digits, `-` and `_`; a tag runs to a blank (in flow context, also to `,[]{}`).
fn skip_name(line: &[u8], i: usize, flow: bool) -> usize {
    let tag = line.get(i) == Some(&b'!');
    let mut j = i + 1;
    while let Some(&b) = line.get(j) {
        let name = if tag {
            !(is_blank(b) || (flow && is_flow_indicator(b)))
        } else {
            b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
        };
        if !name {
            break;
        }
        j += 1;
    }
    j
}

fn doc_marker(line: &[u8]) -> bool {
    (line.starts_with(b"---") || line.starts_with(b"...")) && blank_or_end(line, 3)
}

/// Splits at libyaml's line breaks: `\r\n`, `\n`, `\r`, NEL, LS, PS.
fn next_line(text: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    while i < text.len() {
        let len = match text[i] {
            b'\n' => 1,
            b'\r' if text.get(i + 1) == Some(&b'\n') => 2,
            b'\r' => 1,
            0xC2 if text.get(i + 1) == Some(&0x85) => 2,
            0xE2 if text.get(i + 1) == Some(&0x80)
                && matches!(text.get(i + 2), Some(0xA8 | 0xA9)) =>
            {
                3
            }
            _ => 0,
        };
        if len > 0 {
            return (&text[..i], &text[i + len..]);
        }
        i += 1;
    }
    (text, &[])
}

impl Scanner {
    fn new(limit: usize) -> Scanner {
        Scanner {
            limit,
            indents: Vec::new(),
            flow: 0,
            flows: Vec::new(),
            key_allowed: true,
            key_start: None,
            quote: None,
            block: None,
            plain: None,
            in_plain: false,
            line: 0,
            max: 0,
        }
    }

    fn run(&mut self, text: &[u8]) -> Result<usize, Deep> {
        let mut rest = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
        loop {
            let (line, tail) = next_line(rest);
            self.line += 1;
            self.scan_line(line)?;
            if tail.is_empty() && line.len() == rest.len() {
                break;
            }
            rest = tail;
        }
        Ok(self.max)
    }

    fn check(&mut self, column: usize) -> Result<(), Deep> {
        let depth = self.indents.len() + self.flow;
        self.max = self.max.max(depth);
        if depth > self.limit {
            return Err((self.line, column + 1));
        }
        Ok(())
    }

    /// Column of the innermost open block collection (libyaml's `indent`).
    fn parent(&self) -> Option<usize> {
        self.indents.last().map(|(c, _)| *c)
    }

    /// Before a block-context token at `column`: closes the collections it is outside of
    /// (a sequence at the same column ends at anything but `- `).
    fn unroll(&mut self, column: usize, dash: bool) {
        while let Some(&(c, k)) = self.indents.last() {
            if c > column || (c == column && k == Kind::Seq && !dash) {
                self.indents.pop();
            } else {
                break;
            }
        }
    }

    /// Opens a collection at `column` unless one of that kind is open there already.
    fn roll(&mut self, column: usize, kind: Kind) -> Result<(), Deep> {
        let open = match self.indents.last() {
            None => true,
            Some(&(c, k)) => c < column || (c == column && k != kind && kind == Kind::Seq),
        };
        if open {
            self.indents.push((column, kind));
            self.check(column)?;
        }
        Ok(())
    }

    /// A node (scalar, alias, property, flow collection) starts at `column`.
    fn node_start(&mut self, column: usize) {
        self.unroll(column, false);
        if self.key_allowed {
            self.key_start = Some(column);
            self.key_allowed = false;
        }
    }

    fn reset(&mut self) {
        self.indents.clear();
        self.flow = 0;
        self.flows.clear();
        self.key_allowed = true;
        self.key_start = None;
        self.quote = None;
        self.block = None;
        self.plain = None;
        self.in_plain = false;
    }

    fn scan_line(&mut self, line: &[u8]) -> Result<(), Deep> {
        // a simple key never spans lines
        self.key_start = None;
        self.key_allowed = false;
        if let Some(q) = self.quote {
            return match close_quote(line, 0, q) {
                Some(j) => {
                    self.quote = None;
                    self.tokens(line, j, false, None)
                }
                None => Ok(()),
            };
        }
        let indent = line.iter().take_while(|b| **b == b' ').count();
        let blank = line[indent..].iter().all(|b| is_blank(*b));
        if let Some(b) = self.block.as_mut() {
            if blank {
                return Ok(());
            }
            let min = b.parent.map_or(1, |p| p + 1);
            let inside = match b.indent {
                Some(ci) => indent >= ci,
                None if indent >= min => {
                    b.indent = Some(indent);
                    true
                }
                None => false,
            };
            if inside && !doc_marker(line) {
                return Ok(());
            }
            self.block = None;
        }
        if doc_marker(line) {
            self.reset();
            return self.tokens(line, 3, false, None);
        }
        if self.flow > 0 {
            return self.tokens(line, 0, self.in_plain, None);
        }
        if blank {
            return Ok(());
        }
        if indent == 0 && line.first() == Some(&b'%') {
            self.plain = None;
            return Ok(());
        }
        if line[indent] == b'#' {
            self.plain = None;
            return Ok(());
        }
        if let Some(parent) = self.plain {
            if parent.is_none_or(|p| indent > p) {
                // the continuation of a multi-line plain scalar: text
                return self.tokens(line, indent, true, Some(parent));
            }
            self.plain = None;
        }
        self.key_allowed = true;
        self.tokens(line, indent, false, None)
    }

    /// Scans the tokens of a line from `i`. `in_plain`: continuing a plain scalar (in block
    /// context, one whose enclosing collection is at `plain_parent`). Outside plain scalars,
    /// quotes, comments and block scalars, every position is a token position.
    fn tokens(
        &mut self,
        line: &[u8],
        mut i: usize,
        mut in_plain: bool,
        mut plain_parent: Option<Option<usize>>,
    ) -> Result<(), Deep> {
        while let Some(&c) = line.get(i) {
            if is_blank(c) {
                i += 1;
                continue;
            }
            let after_blank = i == 0 || line.get(i - 1).is_some_and(|b| is_blank(*b));
            if c == b'#' && (!in_plain || after_blank) {
                in_plain = false;
                break;
            }
            if in_plain {
                if c == b':' && blank_or_end(line, i + 1) {
                    in_plain = false;
                    if self.flow == 0 {
                        // a value after a (single-line) plain key
                        self.value(i)?;
                    }
                    i += 1;
                    continue;
                }
                if !(self.flow > 0 && is_flow_indicator(c)) {
                    i += 1;
                    continue;
                }
                in_plain = false;
            }
            if self.flow > 0 {
                match c {
                    b'[' | b'{' => self.open_flow(c, false, i)?,
                    b']' | b'}' => self.close_flow(),
                    b',' | b':' | b'?' => {}
                    b'\'' | b'"' => match close_quote(line, i + 1, c) {
                        Some(j) => {
                            i = j;
                            continue;
                        }
                        None => {
                            self.quote = Some(c);
                            break;
                        }
                    },
                    b'&' | b'!' | b'*' => {
                        i = skip_name(line, i, true);
                        continue;
                    }
                    _ => in_plain = true,
                }
                i += 1;
                continue;
            }
            // block context, at a token
            match c {
                b'-' if blank_or_end(line, i + 1) => {
                    self.unroll(i, true);
                    self.roll(i, Kind::Seq)?;
                    self.key_allowed = true;
                    self.key_start = None;
                }
                b'?' if blank_or_end(line, i + 1) => {
                    self.unroll(i, false);
                    self.roll(i, Kind::Map)?;
                    self.key_allowed = true;
                    self.key_start = None;
                }
                b':' if blank_or_end(line, i + 1) => {
                    self.unroll(i, false);
                    self.value(i)?;
                }
                b',' | b']' | b'}' => self.unroll(i, false),
                b'[' | b'{' => {
                    // where a key may start, the collection may be the key of a mapping
                    // that only its `:` opens: count that mapping now
                    let key = self.key_allowed;
                    self.node_start(i);
                    self.open_flow(c, key, i)?;
                }
                b'\'' | b'"' => {
                    self.node_start(i);
                    match close_quote(line, i + 1, c) {
                        Some(j) => {
                            i = j;
                            continue;
                        }
                        None => {
                            self.quote = Some(c);
                            break;
                        }
                    }
                }
                b'|' | b'>' => {
                    self.node_start(i);
                    let parent = self.parent();
                    let increment = line[i + 1..]
                        .iter()
                        .take_while(|b| !is_blank(**b))
                        .find(|b| b.is_ascii_digit())
                        .map(|d| usize::from(d - b'0'));
                    self.block = Some(BlockScalar {
                        parent,
                        indent: increment.map(|n| parent.map_or(n, |p| p + n)),
                    });
                    break;
                }
                b'&' | b'!' | b'*' => {
                    self.node_start(i);
                    i = skip_name(line, i, false);
                    continue;
                }
                _ => {
                    self.node_start(i);
                    plain_parent = Some(self.parent());
                    in_plain = true;
                }
            }
            i += 1;
        }
        if self.flow > 0 {
            self.in_plain = in_plain;
            self.plain = None;
        } else {
            self.in_plain = false;
            self.plain = if in_plain { plain_parent } else { None };
        }
        Ok(())
    }

    fn open_flow(&mut self, c: u8, key: bool, column: usize) -> Result<(), Deep> {
        let levels = if c == b'[' { 2 } else { 1 } + usize::from(key);
        self.flows.push(levels);
        self.flow += levels;
        self.check(column)
    }

    fn close_flow(&mut self) {
        if let Some(levels) = self.flows.pop() {
            self.flow -= levels;
        }
    }

    /// A `:` value indicator in block context: the key (or, without one, the `:` itself)
    /// opens a mapping at its column.
    fn value(&mut self, column: usize) -> Result<(), Deep> {
        let key = self.key_start.take().unwrap_or(column);
        self.roll(key, Kind::Map)?;
        self.key_allowed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
