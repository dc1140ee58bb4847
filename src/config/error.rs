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
