//! The API's bearer tokens and their roles, from a TOML file checked like the configuration:
//!
//! ```toml
//! [[token]]
//! name = "alice"        # the actor written in the audit log
//! role = "operator"     # or "viewer"
//! token = "a long random secret, 16 characters at least"
//! ```
//!
//! Errors name file, line and column, and a file that group or others may read is refused, as
//! ssh refuses a private key. A presented token is compared with every configured one in constant
//! time (`subtle`), and is never logged; the proof of knowing a token ([`proof`]) is what the
//! daemon shows the CLI before the CLI sends its own ([`crate::api::auth`]).

use std::path::Path;

use serde::Deserialize;
use subtle::ConstantTimeEq;
use toml::Spanned;

use crate::checked::error::{read, Source};
use crate::checked::ConfigError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read: blocks, history, explain, audit, metrics.
    Viewer,
    /// Read and act: block, unblock, allow, import.
    Operator,
}

#[derive(Clone)]
pub struct Token {
    pub name: String,
    pub role: Role,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    token: Vec<RawToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: Spanned<String>,
    role: Role,
    token: Spanned<String>,
}

/// Shortest secret accepted.
pub const MIN_SECRET: usize = 16;

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    message: format!(
                        "the tokens file may be read by group or others (mode {mode:04o}): run `chmod 600 {}`",
                        path.display()
                    ),
                });
            }
        }
        let text = read(path)?;
        let src = Source { path, text: &text };
        let raw: RawFile = src.parse()?;
        let mut tokens: Vec<Token> = Vec::new();
        for t in raw.token {
            let name = t.name.get_ref().trim();
            if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(src.error(&t.name.span(), "a token name is non-empty, without spaces"));
            }
            if tokens.iter().any(|o| o.name == name) {
                return Err(src.error(&t.name.span(), format!("token name '{name}' is used twice")));
            }
            let secret = t.token.get_ref();
            if secret.len() < MIN_SECRET || !secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(src.error(
                    &t.token.span(),
                    format!("a token is at least {MIN_SECRET} printable characters, no spaces"),
                ));
            }
            if tokens.iter().any(|o| o.secret == secret.as_bytes()) {
                return Err(src.error(&t.token.span(), "two names share this token"));
            }
            tokens.push(Token { name: name.to_owned(), role: t.role, secret: secret.as_bytes().to_vec() });
        }
        if tokens.is_empty() {
            return Err(ConfigError::File {
                path: path.to_owned(),
                message: "no [[token]]: nobody could use the API".into(),
            });
        }
        Ok(Tokens { tokens })
    }

    /// The token whose secret is `presented`. Every token is compared, each in constant time, so
    /// the time taken says nothing about which one (or how much of one) matched.
    pub fn find(&self, presented: &[u8]) -> Option<&Token> {
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.secret.as_slice().ct_eq(presented)) {
                found = Some(t);
            }
        }
        found
    }

    /// The proof of knowing each token, for `nonce`: what `GET /v1/identity` answers.
    pub fn proofs(&self, nonce: &str) -> Vec<String> {
        self.tokens.iter().map(|t| proof(&t.secret, nonce)).collect()
    }

    #[cfg(test)]
    pub fn from_list(list: &[(&str, Role, &str)]) -> Tokens {
        Tokens {
            tokens: list
                .iter()
                .map(|(n, r, s)| Token { name: (*n).into(), role: *r, secret: s.as_bytes().to_vec() })
                .collect(),
        }
    }
}

/// HMAC-SHA256 of `nonce` (with a fixed context, so the proof serves nothing else) keyed by
/// `secret`, in lowercase hex.
pub fn proof(secret: &[u8], nonce: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"stickwarden identity v1\n");
    mac.update(nonce.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Tokens, String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.toml");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        Tokens::load(&p).map_err(|e| e.to_string().replace(&dir.path().display().to_string(), "DIR"))
    }

    #[test]
    fn tokens_file_is_checked() {
        let t = load("[[token]]\nname = \"alice\"\nrole = \"operator\"\ntoken = \"0123456789abcdef\"\n").unwrap();
        assert_eq!(t.find(b"0123456789abcdef").map(|t| (t.name.as_str(), t.role)), Some(("alice", Role::Operator)));
        assert!(t.find(b"0123456789abcdeX").is_none());
        assert!(t.find(b"").is_none());
        let short = load("[[token]]\nname = \"a\"\nrole = \"viewer\"\ntoken = \"short\"\n").unwrap_err();
        assert!(short.starts_with("DIR/tokens.toml:4:9: a token is at least 16"), "{short}");
        let role = load("[[token]]\nname = \"a\"\nrole = \"root\"\ntoken = \"0123456789abcdef\"\n").unwrap_err();
        assert!(role.starts_with("DIR/tokens.toml:3:8: unknown variant `root`"), "{role}");
        assert!(load("").unwrap_err().contains("no [[token]]"));
        // The secret never shows in debug output.
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn a_tokens_file_readable_by_others_is_refused_with_the_chmod_to_run() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.toml");
        std::fs::write(&p, "[[token]]\nname = \"a\"\nrole = \"viewer\"\ntoken = \"0123456789abcdef\"\n").unwrap();
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Tokens::load(&p).unwrap_err().to_string();
            assert!(e.contains(&format!("(mode {mode:04o}): run `chmod 600 {}`", p.display())), "{e}");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(Tokens::load(&p).is_ok());
    }
}
