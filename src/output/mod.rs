//! Printing tables and entries as they stream: JSON Lines for programs ([`json`]), aligned
//! columns for people. Column widths are taken from the first rows (up to [`ALIGN_SAMPLE`]), which
//! are held back until then; later rows are written at once with those widths, so a huge dump
//! starts printing quickly and never sits in memory.

pub mod columns;
pub mod json;
pub mod progress;

use std::io::{self, Write};

use crate::client::TableItem;
use crate::proto::table::{Entry, TableHeader, Value};

/// `text` safe to show on a terminal: control characters and the bidirectional-override and
/// isolate characters (which can make `10.0.0.1 allow` display as something else) are written as
/// `\u{...}` escapes. Reasons and keys in human output go through it; JSON escapes on its own.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:04x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Rows held back to compute column widths.
pub const ALIGN_SAMPLE: usize = 1000;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

/// Writes dump items to `out` in the chosen format. The first write error is kept and
/// everything after it is skipped (a closed pipe must not cost the rest of the dump's formatting).
pub struct DumpPrinter<W: Write> {
    out: W,
    format: Format,
    /// `{"table":"<name>","key":`, encoded once per table.
    entry_head: Vec<u8>,
    buf: Vec<u8>,
    rows: Aligned,
    error: Option<io::Error>,
}

impl<W: Write> DumpPrinter<W> {
    pub fn new(out: W, format: Format) -> Self {
        DumpPrinter {
            out,
            format,
            entry_head: Vec::new(),
            buf: Vec::with_capacity(64 * 1024),
            rows: Aligned::default(),
            error: None,
        }
    }

    /// With `entries == false` (a table list), headers are printed as rows of the list.
    pub fn item(&mut self, item: TableItem<'_>, entries: bool) {
        if self.error.is_some() {
            return;
        }
        match (item, self.format) {
            (TableItem::Header(h), Format::Json) if !entries => json::table_line(&mut self.buf, &h),
            (TableItem::Header(h), _) if !entries => {
                if self.rows.is_empty() && !self.rows.started {
                    self.rows.push(["TABLE", "TYPE", "SIZE", "USED"].map(String::from).to_vec());
                }
                self.rows.push(table_row(&h));
            }
            (TableItem::Header(h), _) => {
                self.entry_head.clear();
                json::entry_head(&mut self.entry_head, h.name);
            }
            (TableItem::Entry(e), Format::Json) => {
                self.buf.extend_from_slice(&self.entry_head);
                json::entry_rest(&mut self.buf, &e);
            }
            (TableItem::Entry(e), Format::Human) => {
                if self.rows.is_empty() && !self.rows.started {
                    self.rows.push(entry_heading(&e));
                }
                self.rows.push(entry_row(&e));
            }
        }
        if self.rows.pending() >= ALIGN_SAMPLE || self.rows.started {
            self.rows.flush_into(&mut self.buf);
        }
        if self.buf.len() >= 64 * 1024 {
            self.write_buf();
        }
    }

    /// Prints what is held back and flushes; returns the first write error, if any.
    pub fn finish(mut self) -> io::Result<W> {
        self.rows.flush_into(&mut self.buf);
        self.write_buf();
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.out.flush()?;
        Ok(self.out)
    }

    fn write_buf(&mut self) {
        if self.error.is_none() {
            if let Err(e) = self.out.write_all(&self.buf) {
                self.error = Some(e);
            }
        }
        self.buf.clear();
    }
}

fn table_row(h: &TableHeader<'_>) -> Vec<String> {
    vec![h.name.to_owned(), h.key_type.to_owned(), h.size.to_string(), h.used.to_string()]
}

/// `KEY USE EXPIRES <columns...>`, a rate column named with its period: `http_req_rate(10s)`.
fn entry_heading(e: &Entry<'_>) -> Vec<String> {
    let mut row = vec!["KEY".to_owned(), "USE".to_owned(), "EXPIRES".to_owned()];
    for c in e.columns() {
        row.push(match c.period_ms {
            Some(p) => format!("{}({})", c.name, human_ms(p as u64)),
            None => c.name.to_owned(),
        });
    }
    row
}

fn entry_row(e: &Entry<'_>) -> Vec<String> {
    // The key as dumped: escapes keep a string key on one line and in one column.
    let mut row = vec![String::from_utf8_lossy(e.raw_key()).into_owned(), e.use_count.to_string()];
    row.push(if e.exp_ms == 0 { "-".to_owned() } else { human_ms(e.exp_ms) });
    for c in e.columns() {
        row.push(match c.value {
            Value::Uint(u) => u.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Text(t) => t.to_owned(),
        });
    }
    row
}

/// `899986` -> `14m59s`, `10000` -> `10s`, `500` -> `500ms`.
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// Rows held back until widths are known; after that, rows pass straight through.
#[derive(Default)]
struct Aligned {
    rows: Vec<Vec<String>>,
    widths: Vec<usize>,
    started: bool,
}

impl Aligned {
    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn pending(&self) -> usize {
        self.rows.len()
    }

    fn flush_into(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            for row in &self.rows {
                if self.widths.len() < row.len() {
                    self.widths.resize(row.len(), 0);
                }
                for (w, cell) in self.widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            self.started = !self.rows.is_empty();
        }
        for row in self.rows.drain(..) {
            let last = row.len().saturating_sub(1);
            for (i, cell) in row.iter().enumerate() {
                out.extend_from_slice(cell.as_bytes());
                if i < last {
                    let pad = self.widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count()) + 2;
                    out.extend(std::iter::repeat_n(b' ', pad));
                }
            }
            out.push(b'\n');
        }
    }
}

#[cfg(test)]
mod printable_tests {
    #[test]
    fn control_and_bidi_characters_are_escaped() {
        assert_eq!(super::printable("plain reason, é 漢"), "plain reason, é 漢");
        assert_eq!(super::printable("a\u{202e}kcolb\u{202c}b"), "a\\u{202e}kcolb\\u{202c}b");
        assert_eq!(super::printable("x\ny\x1b[31m"), "x\\u{000a}y\\u{001b}[31m");
        assert_eq!(super::printable("\u{2066}\u{2069}\u{200f}"), "\\u{2066}\\u{2069}\\u{200f}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::table::{EntryParser, Line};

    fn print(lines: &[&[u8]], format: Format, entries: bool) -> String {
        let mut p = DumpPrinter::new(Vec::new(), format);
        let mut parser = EntryParser::new();
        for l in lines {
            match parser.parse_line(l) {
                Line::Header(h) => p.item(TableItem::Header(h), entries),
                Line::Entry(e) => p.item(TableItem::Entry(e), entries),
                _ => panic!(),
            }
        }
        String::from_utf8(p.finish().unwrap()).unwrap()
    }

    #[test]
    fn human_entries_are_aligned() {
        let out = print(
            &[
                b"# table: ft_web, type: ip, size:1048576, used:2",
                b"0x1: key=10.1.2.3 use=0 exp=899986 gpt0=1 http_req_rate(10000)=50",
                b"0x2: key=127.0.0.1 use=12 exp=0 gpt0=0 http_req_rate(10000)=7",
            ],
            Format::Human,
            true,
        );
        assert_eq!(
            out,
            "KEY        USE  EXPIRES  gpt0  http_req_rate(10s)\n\
             10.1.2.3   0    14m59s   1     50\n\
             127.0.0.1  12   -        0     7\n"
        );
    }

    #[test]
    fn human_table_list_and_json() {
        let lines: [&[u8]; 2] =
            [b"# table: a, type: ip, size:10, used:1", b"# table: long_name, type: string, size:1024, used:0"];
        assert_eq!(
            print(&lines, Format::Human, false),
            "TABLE      TYPE    SIZE  USED\na          ip      10    1\nlong_name  string  1024  0\n"
        );
        let json = print(&lines, Format::Json, false);
        assert_eq!(json.lines().count(), 2);
        assert!(json.starts_with("{\"table\":\"a\",\"type\":\"ip\""));
    }

    #[test]
    fn durations() {
        assert_eq!(human_ms(500), "500ms");
        assert_eq!(human_ms(10_000), "10s");
        assert_eq!(human_ms(3_600_000), "1h");
        assert_eq!(human_ms(90_061_000), "1d1h1m1s");
    }
}
