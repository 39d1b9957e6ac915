use std::ops::Range;
use std::path::{Path, PathBuf};

/// What is wrong with a configuration or rules file, and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

/// A place in a file, kept with checked values so later cross-checks can point back at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// An error about the value at this place.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { path: self.path.clone(), line: self.line, column: self.column, message: message.into() }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// One file's text, to turn byte spans into line and column.
pub(crate) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn locate(&self, span: &Range<usize>) -> Location {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let column = start - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        Location { path: self.path.to_owned(), line, column }
    }

    pub fn error(&self, span: &Range<usize>, message: impl Into<String>) -> ConfigError {
        self.locate(span).error(message)
    }

    /// TOML's own errors (syntax, a wrong type, an unknown field, a value our types refused).
    pub fn toml_error(&self, e: toml::de::Error) -> ConfigError {
        let message = e.message().trim().to_owned();
        match e.span() {
            Some(span) => self.error(&span, message),
            None => ConfigError::File { path: self.path.to_owned(), message },
        }
    }

    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|e| self.toml_error(e))
    }
}

pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })
}
