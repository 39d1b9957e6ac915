//! Escaping of command arguments and unescaping of dumped string keys.
//!
//! The two directions are not symmetric because HAProxy's two sides are not: the CLI tokenizer
//! (`cli.c`) splits a line on unescaped spaces, tabs and `;`, and a backslash makes the next byte
//! literal; the table dumper (`dump_text()` in `tools.c`) writes space, `=`, `\` with a backslash,
//! tab/LF/CR/ESC as `\t \n \r \e`, and any other non-printable or non-ASCII byte as `\xHH`.
//! A newline can never travel inside an argument (it ends the line), so [`escape_arg`] refuses it.

use std::borrow::Cow;

/// Why an argument cannot be put on a Runtime API command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscapeError {
    #[error("contains a line feed, which the Runtime API cannot carry inside an argument")]
    LineFeed,
    #[error("contains a NUL byte, which HAProxy reads as the end of the argument")]
    Nul,
    #[error("is empty")]
    Empty,
}

/// Appends `arg` to `out`, escaped for the CLI tokenizer.
///
/// Escapes the separators (space, tab, `;`), the escape itself (`\`), `<` (so that a trailing `<<`
/// is never read as the start of a payload) and CR (stripped at end of line otherwise).
pub fn escape_arg(arg: &[u8], out: &mut Vec<u8>) -> Result<(), EscapeError> {
    if arg.is_empty() {
        return Err(EscapeError::Empty);
    }
    for &b in arg {
        match b {
            b'\n' => return Err(EscapeError::LineFeed),
            0 => return Err(EscapeError::Nul),
            b' ' | b'\t' | b';' | b'\\' | b'<' | b'\r' => {
                out.push(b'\\');
                out.push(b);
            }
            _ => out.push(b),
        }
    }
    Ok(())
}

/// Undoes `dump_text()` escaping of a dumped string key.
///
/// Borrows when there is nothing to undo (the common case). A malformed escape (a trailing
/// backslash, `\x` without two hex digits, an unknown letter) is kept literally: HAProxy never
/// writes one, and keeping bytes is better than failing a whole dump on one odd key.
pub fn unescape_key(raw: &[u8]) -> Cow<'_, [u8]> {
    let Some(first) = memchr::memchr(b'\\', raw) else {
        return Cow::Borrowed(raw);
    };
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(&raw[..first]);
    let mut i = first;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 >= raw.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let next = raw[i + 1];
        let (decoded, used) = match next {
            b't' => (b'\t', 2),
            b'n' => (b'\n', 2),
            b'r' => (b'\r', 2),
            b'e' => (0x1b, 2),
            b'x' => match (raw.get(i + 2).and_then(hex), raw.get(i + 3).and_then(hex)) {
                (Some(h), Some(l)) => ((h << 4) | l, 4),
                _ => (b'\\', 1),
            },
            b' ' | b'=' | b'\\' => (next, 2),
            _ => (b'\\', 1),
        };
        out.push(decoded);
        i += used;
    }
    Cow::Owned(out)
}

/// Escapes bytes the way `dump_text()` does (for tests, and tools that write dumps).
pub fn dump_escape(key: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &c in key {
        match c {
            b' ' | b'=' | b'\\' => out.extend_from_slice(&[b'\\', c]),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0x1b => out.extend_from_slice(b"\\e"),
            0x21..=0x7e => out.push(c),
            _ => out.extend_from_slice(&[b'\\', b'x', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]),
        }
    }
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn esc(s: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        escape_arg(s, &mut v).unwrap();
        v
    }

    #[test]
    fn escapes_separators_and_backslash() {
        assert_eq!(esc(b"a b=c\\d;e"), b"a\\ b=c\\\\d\\;e".to_vec());
        assert_eq!(esc(b"x\tb<<"), b"x\\\tb\\<\\<".to_vec());
    }

    #[test]
    fn refuses_what_cannot_travel() {
        let mut v = Vec::new();
        assert_eq!(escape_arg(b"a\nb", &mut v), Err(EscapeError::LineFeed));
        assert_eq!(escape_arg(b"a\0b", &mut v), Err(EscapeError::Nul));
        assert_eq!(escape_arg(b"", &mut v), Err(EscapeError::Empty));
    }

    #[test]
    fn unescapes_the_fixture_keys() {
        // From fixtures/haproxy-2.6.12/show-table-t_str.txt.
        assert_eq!(&*unescape_key(b"a\\ b\\=c\\\\d;e"), b"a b=c\\d;e");
        assert_eq!(&*unescape_key(b"tab\\there"), b"tab\there");
        assert_eq!(&*unescape_key(b"\\xC3\\xA9\\e"), "é\x1b".as_bytes());
        assert!(matches!(unescape_key(b"plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn malformed_escapes_are_kept() {
        assert_eq!(&*unescape_key(b"a\\"), b"a\\");
        assert_eq!(&*unescape_key(b"a\\xZ1"), b"a\\xZ1");
        assert_eq!(&*unescape_key(b"a\\q"), b"a\\q");
    }

    proptest! {
        #[test]
        fn dump_escape_round_trips(key in proptest::collection::vec(1u8..=255, 0..64)) {
            let mut dumped = Vec::new();
            dump_escape(&key, &mut dumped);
            prop_assert_eq!(&*unescape_key(&dumped), &key[..]);
        }

        #[test]
        fn unescape_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = unescape_key(&raw);
        }

        #[test]
        fn escaped_args_have_no_bare_separator(arg in proptest::collection::vec(1u8..=255, 1..64)) {
            let mut out = Vec::new();
            if escape_arg(&arg, &mut out).is_ok() {
                // Undo the CLI's rule (backslash makes the next byte literal) and compare.
                let mut back = Vec::new();
                let mut it = out.iter();
                while let Some(&b) = it.next() {
                    if b == b'\\' {
                        back.push(*it.next().unwrap());
                    } else {
                        prop_assert!(b != b' ' && b != b'\t' && b != b';');
                        back.push(b);
                    }
                }
                prop_assert_eq!(back, arg);
            }
        }
    }
}
