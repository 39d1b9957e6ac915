//! Checked TOML, below every module that reads a file: the error that names a file, line and
//! column ([`ConfigError`], [`Location`]), the source text that turns byte spans into places, and
//! the value types every file shares (durations, networks, RFC 3339 times) with their limits. The
//! configuration ([`crate::config`]), the rules ([`crate::rules`]) and the tokens file are all read
//! through it, so none of them imports another to report an error.

pub mod error;
pub mod values;

pub use error::{ConfigError, Location};
