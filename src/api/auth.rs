//! The API's side of its bearer tokens, which [`crate::config::tokens`] loads and checks: before
//! the CLI sends its token anywhere, the listener proves it is the daemon. The CLI sends a fresh
//! random nonce to `GET /v1/identity`, the daemon answers HMAC-SHA256(token, nonce) for each of
//! its tokens ([`proof`]), and the CLI sends its token only when one of them is the one it
//! computes itself. An impostor on the API's port or path knows no token, so it learns nothing
//! and gets nothing.

use crate::config::tokens::hex;
pub use crate::config::tokens::{proof, Role, Token, Tokens, MIN_SECRET};

/// Whether `nonce` is what the CLI sends: 32 random bytes in lowercase hex.
pub fn valid_nonce(nonce: &str) -> bool {
    nonce.len() == 64 && nonce.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fresh nonce from the kernel's random source.
pub fn new_nonce() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_proofs_depend_on_token_and_nonce() {
        let t =
            Tokens::from_list(&[("a", Role::Viewer, "0123456789abcdef"), ("b", Role::Operator, "fedcba9876543210")]);
        let n = new_nonce().unwrap();
        assert!(valid_nonce(&n) && !valid_nonce("xyz") && !valid_nonce(&n.to_uppercase()));
        let p = t.proofs(&n);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0], proof(b"0123456789abcdef", &n));
        assert_ne!(p[0], proof(b"0123456789abcdef", &new_nonce().unwrap()));
        assert!(!p.contains(&proof(b"0123456789abcdeX", &n)));
        // RFC 4231 shape: 32 bytes, hex.
        assert_eq!(p[1].len(), 64);
    }
}
