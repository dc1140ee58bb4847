//! A configuration problem pointing at the file, line and field to fix.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SourceError {
    pub file: PathBuf,
    /// 1-based; `None` when the problem is the file as a whole.
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}: {}", self.file.display(), l, self.field, self.message),
            None => write!(f, "{}: {}: {}", self.file.display(), self.field, self.message),
        }
    }
}

/// Byte ranges of each `[[table]]` entry: from its header to the next
/// top-level header that is not one of its own sub-tables.
pub(crate) fn entry_spans(text: &str, table: &str) -> Vec<std::ops::Range<usize>> {
    let header = format!("[[{table}]]");
    let own = format!("[{table}.");
    let own_array = format!("[[{table}.");
    let mut spans = Vec::new();
    let mut start: Option<usize> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t == header {
            if let Some(s) = start.take() {
                spans.push(s..offset);
            }
            start = Some(offset);
        } else if t.starts_with('[') && !t.starts_with(&own) && !t.starts_with(&own_array) {
            if let Some(s) = start.take() {
                spans.push(s..offset);
            }
        }
        offset += line.len();
    }
    if let Some(s) = start {
        spans.push(s..text.len());
    }
    spans
}

/// Byte ranges of each top-level section (`[name]` or `[[name]]` with its
/// sub-tables) of a file.
pub(crate) fn section_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut start: Option<(usize, String)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t
                .trim_matches(['[', ']'])
                .split('.')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let same_section = start.as_ref().is_some_and(|(_, n)| *n == name) && t.contains('.');
            if !same_section {
                if let Some((s, _)) = start.take() {
                    spans.push(s..offset);
                }
                start = Some((offset, name));
            }
        }
        offset += line.len();
    }
    if let Some((s, _)) = start {
        spans.push(s..text.len());
    }
    spans
}

/// Where `key =` is written inside `span` (the first line that assigns it,
/// also inside an inline table: `level = [{after_minutes = 5, ...}]`).
fn key_offset(text: &str, span: std::ops::Range<usize>, key: &str) -> Option<usize> {
    let key = key.rsplit(['.', ']']).next().unwrap_or(key);
    if key.is_empty() {
        return None;
    }
    let chunk = text.get(span.clone())?;
    let mut from = 0;
    while let Some(i) = chunk[from..].find(key) {
        let at = from + i;
        let before = chunk[..at].chars().next_back();
        let after = chunk[at + key.len()..].trim_start_matches([' ', '\t']);
        let word_start = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if word_start && after.starts_with('=') {
            return Some(span.start + at);
        }
        from = at + key.len();
    }
    None
}

/// The text with every line outside `keep` blanked (newlines and byte offsets
/// kept), so one entry can be parsed alone and its errors still point at the
/// right lines of the whole file.
pub(crate) fn only(text: &str, keep: std::ops::Range<usize>) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        if keep.contains(&i) || c == '\n' {
            out.push(c);
        } else {
            // As many spaces as the character had bytes: offsets stay true.
            out.extend(std::iter::repeat_n(' ', c.len_utf8()));
        }
    }
    out
}

pub(crate) fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// The key on a line (`name` in `name = "x"`), or the table header.
fn key_on_line(text: &str, line: usize) -> String {
    let l = text.lines().nth(line.saturating_sub(1)).unwrap_or("").trim();
    match l.split_once('=') {
        Some((k, _)) => k.trim().to_string(),
        None => l.to_string(),
    }
}

impl SourceError {
    pub fn io(path: &Path, e: &std::io::Error) -> Self {
        Self {
            file: path.into(),
            line: None,
            field: "(file)".into(),
            message: format!("cannot read: {e}"),
        }
    }

    pub fn toml(path: &Path, text: &str, e: &toml::de::Error) -> Self {
        let line = e.span().map(|s| line_of_offset(text, s.start));
        let mut field = line.map(|l| key_on_line(text, l)).unwrap_or_default();
        // serde names the offending key in the message; prefer it.
        let msg = e.message().to_string();
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            if let Some((k, _)) = rest.split_once('`') {
                field = k.to_string();
            }
        } else if let Some(rest) = msg.strip_prefix("missing field `") {
            if let Some((k, _)) = rest.split_once('`') {
                field = k.to_string();
            }
        }
        if field.is_empty() {
            field = "(syntax)".into();
        }
        Self {
            file: path.into(),
            line,
            field,
            message: msg.trim().to_string(),
        }
    }

    /// An error about a value found by its text (`id = "B17"`): the line is the
    /// first line holding `needle`.
    pub fn field(path: &Path, text: &str, needle: &str, message: String) -> Self {
        let line = text.find(needle).map(|o| line_of_offset(text, o));
        let field = line.map(|l| key_on_line(text, l)).unwrap_or_else(|| needle.to_string());
        Self {
            file: path.into(),
            line,
            field,
            message,
        }
    }

    /// An error about `field` inside the entry at `span` (a `[[rule]]`, say):
    /// the line of that key within the entry, or the entry's first line.
    pub fn in_span(path: &Path, text: &str, span: std::ops::Range<usize>, field: &str, message: String) -> Self {
        let at = key_offset(text, span.clone(), field).unwrap_or(span.start);
        Self::spanned(path, text, at..at, field, message)
    }

    /// An error about `field` in the `index`-th `[[table]]` entry of a file.
    pub fn in_entry(path: &Path, text: &str, table: &str, index: usize, field: &str, message: String) -> Self {
        match entry_spans(text, table).get(index) {
            Some(span) => Self::in_span(path, text, span.clone(), field, message),
            None => Self::field(path, text, field, message),
        }
    }

    /// An error about a value known by its exact byte span.
    pub fn spanned(path: &Path, text: &str, span: std::ops::Range<usize>, field: &str, message: String) -> Self {
        Self {
            file: path.into(),
            line: Some(line_of_offset(text, span.start)),
            field: field.into(),
            message,
        }
    }
}
