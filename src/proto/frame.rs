//! Framing of Runtime API answers in a byte stream.
//!
//! Every answer ends with an empty line (`...\n\n`, or a lone `\n` for an empty answer). In
//! interactive mode each answer is followed by the prompt `> `, which therefore appears at the
//! start of the next answer and is removed here (2.x and 3.x write it the same way; `prompt i`
//! on 3.2+ writes none). The framer works on a buffer that always begins at a line start and
//! never splits a line, so a large dump can be handed on in chunks of whole lines as it arrives.

use memchr::memmem;

/// What the start of a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not enough bytes to say anything: read more.
    NeedMore,
    /// Skip this many bytes of prompt; the answer starts after them.
    Prompt(usize),
    /// The first `n` bytes are complete lines of an answer that goes on.
    Lines(usize),
    /// The answer ends: its last lines are the first `body` bytes, and `consumed` bytes
    /// (body plus terminator) can be dropped.
    End { body: usize, consumed: usize },
}

/// The master CLI's prompt (`haproxy -W -S`).
pub const MASTER_PROMPT: &[u8] = b"master> ";

/// Reads one step at the start of `buf`. `at_answer_start` is true when no byte of the current
/// answer has been consumed yet (the only place a prompt can be).
pub fn step(buf: &[u8], at_answer_start: bool) -> Step {
    if at_answer_start {
        match buf {
            [] | [b'>'] => return Step::NeedMore,
            [b'>', b' ', ..] => return Step::Prompt(2),
            _ if buf.starts_with(MASTER_PROMPT) => return Step::Prompt(MASTER_PROMPT.len()),
            _ if buf.len() < MASTER_PROMPT.len() && MASTER_PROMPT.starts_with(buf) => return Step::NeedMore,
            _ => {}
        }
    }
    match buf.first() {
        None => Step::NeedMore,
        Some(b'\n') => Step::End { body: 0, consumed: 1 },
        Some(_) => match memmem::find(buf, b"\n\n") {
            Some(i) => Step::End { body: i + 1, consumed: i + 2 },
            None => match memchr::memrchr(b'\n', buf) {
                Some(i) => Step::Lines(i + 1),
                None => Step::NeedMore,
            },
        },
    }
}

/// Splits a buffer holding whole answers into their bodies (used by tests and offline tools).
pub fn split_answers(mut buf: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = true;
    let mut body_start: Option<usize> = None;
    let mut pos = 0;
    loop {
        match step(&buf[pos..], start) {
            Step::NeedMore => break,
            Step::Prompt(n) => buf = &buf[n..],
            Step::Lines(n) => {
                body_start.get_or_insert(pos);
                pos += n;
                start = false;
            }
            Step::End { body, consumed } => {
                let from = body_start.take().unwrap_or(pos);
                out.push(&buf[from..pos + body]);
                buf = &buf[pos + consumed..];
                pos = 0;
                start = true;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::test_fixtures::{fixture, VERSIONS};
    use proptest::prelude::*;

    #[test]
    fn prompt_sessions_of_both_versions() {
        for v in VERSIONS {
            // 'prompt', 'show table t_int', 'show table nosuch', 'set table ...', 'quit'.
            let raw = fixture(v, "prompt-session");
            let answers = split_answers(&raw);
            assert_eq!(answers.len(), 4, "{v}");
            assert_eq!(answers[0], b"");
            assert!(answers[1].starts_with(b"# table: t_int"), "{v}");
            assert!(answers[1].ends_with(b"gpc0=1\n"), "{v}");
            assert_eq!(answers[2], b"No such table\n");
            assert_eq!(answers[3], b"");
        }
    }

    #[test]
    fn prompt_i_and_non_interactive() {
        // 3.4 `prompt i`: answers end with the empty line, no prompt.
        let raw = fixture("haproxy-3.4.0", "prompt-i-session");
        let answers = split_answers(&raw);
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[2], b"No such table\n");
        // 2.6 has no `prompt i` and treats it as `prompt`.
        let raw = fixture("haproxy-2.6.12", "prompt-i-session");
        assert_eq!(split_answers(&raw).len(), 3);
        for v in VERSIONS {
            let raw = fixture(v, "multi-semicolon");
            let answers = split_answers(&raw);
            assert_eq!(answers.len(), 3, "{v}");
            assert!(answers[2].starts_with(b"Name: HAProxy\n"));
        }
    }

    #[test]
    fn partial_input_waits() {
        assert_eq!(step(b"", true), Step::NeedMore);
        assert_eq!(step(b">", true), Step::NeedMore);
        assert_eq!(step(b"> ", true), Step::Prompt(2));
        // The master CLI's prompt, whole or not yet whole; not a prompt in the middle of an answer.
        assert_eq!(step(b"master> No such table\n\n", true), Step::Prompt(8));
        assert_eq!(step(b"mast", true), Step::NeedMore);
        assert_eq!(step(b"master> x\n", false), Step::Lines(10));
        assert_eq!(step(b"# table", true), Step::NeedMore);
        assert_eq!(step(b"# table: a\n0x1: k", false), Step::Lines(11));
        assert_eq!(step(b"\n", false), Step::End { body: 0, consumed: 1 });
        assert_eq!(step(b"a\n\n> ", true), Step::End { body: 2, consumed: 3 });
    }

    proptest! {
        /// Feeding a stream in arbitrary pieces gives the same answers as in one piece.
        #[test]
        fn chunking_does_not_change_answers(cuts in proptest::collection::vec(0usize..300, 0..8)) {
            let raw = fixture("haproxy-2.6.12", "prompt-session");
            let whole: Vec<Vec<u8>> = split_answers(&raw).into_iter().map(<[u8]>::to_vec).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (raw.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.push(raw.len());
            // Simulate the connection: a buffer that grows by pieces, consumed step by step.
            let mut buf: Vec<u8> = Vec::new();
            let mut answers: Vec<Vec<u8>> = Vec::new();
            let mut current: Vec<u8> = Vec::new();
            let mut start = true;
            let mut prev = 0;
            for cut in cuts {
                buf.extend_from_slice(&raw[prev..cut]);
                prev = cut;
                loop {
                    match step(&buf, start) {
                        Step::NeedMore => break,
                        Step::Prompt(n) => { buf.drain(..n); }
                        Step::Lines(n) => { current.extend(buf.drain(..n)); start = false; }
                        Step::End { body, consumed } => {
                            current.extend_from_slice(&buf[..body]);
                            buf.drain(..consumed);
                            answers.push(std::mem::take(&mut current));
                            start = true;
                        }
                    }
                }
            }
            prop_assert_eq!(answers, whole);
        }

        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200), start: bool) {
            let _ = step(&buf, start);
            let _ = split_answers(&buf);
        }
    }
}
