//! Telling HAProxy's errors apart from success, and classifying them.
//!
//! The Runtime API has no status codes. The connection asks for `set severity-output number`, so
//! most errors arrive as `[3]: text` and informational messages as `[6]: text`; dumps are never
//! prefixed. Some errors are not sent through the error path (2.6 and 3.4 print "Unknown command"
//! with `[6]`, and a `level user` dump ends with a `#` comment), so the text is classified too.

use std::fmt;

/// What kind of error HAProxy reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NoSuchTable,
    UnknownDataType,
    DataTypeNotStored,
    InvalidKey,
    TableFull,
    PermissionDenied,
    UnknownAcl,
    UnknownMap,
    InvalidPattern,
    KeyNotFound,
    EntryInUse,
    NoSuchSession,
    UnknownCommand,
    LineTooLong,
    /// A value or a filter HAProxy could not read (`Require a valid integer ...`, bad operator).
    BadArgument,
    Other,
}

/// An error answered by HAProxy: its kind and HAProxy's own text (prefix and trailing newline removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyError {
    pub kind: ErrorKind,
    pub text: String,
}

impl fmt::Display for HaproxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for HaproxyError {}

impl HaproxyError {
    /// Classifies an error text (without the `[3]: ` prefix).
    pub fn classify(text: &str) -> HaproxyError {
        let text = text.trim_end().to_owned();
        // `Filter entry #N: ...` carries the real message after the position.
        let msg = match text.strip_prefix("Filter entry #") {
            Some(rest) => rest.split_once(": ").map_or(rest, |(_, m)| m),
            None => text.as_str(),
        };
        let kind = if msg.starts_with("No such table") {
            ErrorKind::NoSuchTable
        } else if msg.starts_with("Unknown data type") {
            ErrorKind::UnknownDataType
        } else if msg.starts_with("Data type not stored") {
            ErrorKind::DataTypeNotStored
        } else if msg.starts_with("Invalid key") {
            ErrorKind::InvalidKey
        } else if msg.starts_with("Unable to allocate a new entry") {
            ErrorKind::TableFull
        } else if msg.starts_with("Permission denied") || msg.contains("insufficient privileges") {
            ErrorKind::PermissionDenied
        } else if msg.starts_with("Unknown ACL identifier") {
            ErrorKind::UnknownAcl
        } else if msg.contains("is not a valid IPv4 or IPv6 address") || msg.starts_with("Invalid pattern") {
            ErrorKind::InvalidPattern
        } else if msg.starts_with("Unknown map identifier") {
            ErrorKind::UnknownMap
        } else if msg.starts_with("Key not found") || msg.starts_with("entry not found") {
            ErrorKind::KeyNotFound
        } else if msg.starts_with("Entry currently in use") {
            ErrorKind::EntryInUse
        } else if msg.starts_with("No such session") {
            ErrorKind::NoSuchSession
        } else if msg.starts_with("Unknown command") {
            ErrorKind::UnknownCommand
        } else if msg.starts_with("The command line is too big") {
            ErrorKind::LineTooLong
        } else if msg.starts_with("Require a valid integer")
            || msg.starts_with("Require and operator")
            || msg.starts_with("Detected extra data in filter")
            || msg.contains("followed by a value expected")
            || msg.starts_with("Too many arguments")
        {
            ErrorKind::BadArgument
        } else {
            ErrorKind::Other
        };
        HaproxyError { kind, text }
    }
}

/// The severity prefix `set severity-output number` puts on a message line, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `[0]` to `[4]`: emergency to warning.
    Error,
    /// `[5]` to `[7]`: notice to debug.
    Info,
}

/// Splits a `[N]: ` prefix off the first line of an answer.
pub fn split_severity(line: &[u8]) -> Option<(Severity, &[u8])> {
    match line {
        [b'[', d @ b'0'..=b'7', b']', b':', b' ', rest @ ..] => {
            Some((if *d <= b'4' { Severity::Error } else { Severity::Info }, rest))
        }
        _ => None,
    }
}

/// Decides whether a complete answer body is an error.
///
/// `Ok` carries the body with any info prefix removed from its first line. An unprefixed
/// "Unknown command" or the insufficient-privileges comment count as errors too.
pub fn check_answer(body: &[u8]) -> Result<&[u8], HaproxyError> {
    let first_end = memchr::memchr(b'\n', body).map_or(body.len(), |i| i + 1);
    let error = |text: &[u8]| HaproxyError::classify(&String::from_utf8_lossy(text));
    match split_severity(&body[..first_end]) {
        Some((Severity::Error, _)) => Err(error(&body[PREFIX_LEN..])),
        Some((Severity::Info, msg)) if msg.starts_with(b"Unknown command") => Err(error(&body[PREFIX_LEN..])),
        Some((Severity::Info, _)) => Ok(&body[PREFIX_LEN..]),
        None if body.starts_with(b"Unknown command") || body.starts_with(b"Permission denied") => Err(error(body)),
        // Without severity prefixes (the master CLI cannot set them): a known error text. No
        // successful answer starts like one (dumps start with `#` or `0x`, `show info` with `Name:`).
        None if HaproxyError::classify(&String::from_utf8_lossy(&body[..first_end])).kind != ErrorKind::Other => {
            Err(error(body))
        }
        None => Ok(body),
    }
}

/// Length of a `[N]: ` prefix.
const PREFIX_LEN: usize = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::test_fixtures::{fixture, VERSIONS};

    fn kind_of(body: &[u8]) -> ErrorKind {
        check_answer(body).unwrap_err().kind
    }

    #[test]
    fn unprefixed_error_texts_are_errors_and_dumps_are_not() {
        // What the master CLI forwards: no `[3]:` prefix.
        assert_eq!(check_answer(b"No such table\n").unwrap_err().kind, ErrorKind::NoSuchTable);
        assert_eq!(
            check_answer(b"Unknown ACL identifier. Please use #<id> or <file>.\n").unwrap_err().kind,
            ErrorKind::UnknownAcl
        );
        for ok in [&b"# table: t, type: ip, size:1, used:0\n"[..], b"Name: HAProxy\n", b"New version created: 1\n", b""]
        {
            assert!(check_answer(ok).is_ok(), "{}", String::from_utf8_lossy(ok));
        }
    }

    #[test]
    fn classifies_every_captured_error_of_both_versions() {
        let cases = [
            ("err-no-such-table", ErrorKind::NoSuchTable),
            ("err-filter-unknown-type", ErrorKind::UnknownDataType),
            ("err-filter-not-stored", ErrorKind::DataTypeNotStored),
            ("err-filter-bad-op", ErrorKind::BadArgument),
            ("err-filter-bad-int", ErrorKind::BadArgument),
            ("err-filter-five", ErrorKind::BadArgument),
            ("err-set-unknown-type", ErrorKind::UnknownDataType),
            ("err-set-not-stored", ErrorKind::DataTypeNotStored),
            ("err-set-bad-int", ErrorKind::BadArgument),
            ("err-set-invalid-key-v6", ErrorKind::InvalidKey),
            ("err-add-acl-bad-pattern", ErrorKind::InvalidPattern),
            ("err-add-acl-unknown", ErrorKind::UnknownAcl),
            ("err-del-acl-missing", ErrorKind::KeyNotFound),
            ("err-shutdown-session-missing", ErrorKind::NoSuchSession),
            ("err-shutdown-session-garbage", ErrorKind::Other),
            ("err-unknown-command", ErrorKind::UnknownCommand),
            ("shutdown-session-oper-level", ErrorKind::PermissionDenied),
        ];
        for v in VERSIONS {
            for (name, kind) in cases {
                // The captures were taken without severity prefixes: classify the plain text ...
                let plain = fixture(v, name);
                let body = &plain[..plain.len() - 1];
                assert_eq!(HaproxyError::classify(&String::from_utf8_lossy(body)).kind, kind, "{v} {name}");
                // ... and as the connection sees it, with the `[3]: ` prefix.
                let mut prefixed = b"[3]: ".to_vec();
                prefixed.extend_from_slice(body);
                assert_eq!(kind_of(&prefixed), kind, "{v} {name} prefixed");
            }
        }
    }

    #[test]
    fn severity_fixtures() {
        for v in VERSIONS {
            // `set severity-output number; show table nosuch`: two answers, the second is the error.
            let err = fixture(v, "severity-error");
            assert_eq!(&err[..1], b"\n");
            let e = check_answer(&err[1..err.len() - 1]).unwrap_err();
            assert_eq!(e.kind, ErrorKind::NoSuchTable);
            assert_eq!(e.text, "No such table");
            let info = fixture(v, "severity-prepare");
            assert_eq!(check_answer(&info[1..info.len() - 1]).unwrap(), b"New version created: 2\n");
            assert_eq!(fixture(v, "severity-ok"), b"\n\n");
        }
        // Observed on 2.6.12: an unknown command comes back as info, and is still an error.
        assert_eq!(
            kind_of(b"[6]: Unknown command, but maybe one of the following ones is a better match:\n"),
            ErrorKind::UnknownCommand
        );
    }

    #[test]
    fn success_bodies_pass() {
        assert_eq!(check_answer(b""), Ok(&b""[..]));
        assert!(check_answer(b"# table: t, type: ip, size:1, used:0\n").is_ok());
        assert_eq!(HaproxyError::classify("Entry currently in use, cannot remove\n").kind, ErrorKind::EntryInUse);
        assert_eq!(HaproxyError::classify("Unable to allocate a new entry").kind, ErrorKind::TableFull);
        assert_eq!(
            HaproxyError::classify("The command line is too big for the buffer size. Please change tune.bufsize in the configuration to use a bigger command.").kind,
            ErrorKind::LineTooLong
        );
    }
}
