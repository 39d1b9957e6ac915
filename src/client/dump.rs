//! A `show table` answer as it streams in: chunks of whole lines from the connection actor,
//! parsed entry by entry and handed to a callback, so that a million-entry table is never held.
//!
//! An error answer (`[3]: No such table`, a refused filter) is recognised on its first line and
//! returned as an error; a dump refused for lack of privileges (`level user`) is an error too,
//! after its header. A line that cannot be parsed is counted, logged and skipped: one odd entry
//! must not hide all the others.

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::warn;

use super::ClientError;
use crate::proto::error::{check_answer, HaproxyError};
use crate::proto::table::{Entry, EntryParser, Line, TableHeader};

/// What a dump hands to its callback.
#[derive(Debug, Clone, Copy)]
pub enum TableItem<'a> {
    Header(TableHeader<'a>),
    Entry(Entry<'a>),
}

/// Counts of one finished dump.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpStats {
    pub tables: u64,
    pub entries: u64,
    /// Lines that could not be parsed and were skipped.
    pub invalid: u64,
    pub bytes: u64,
}

/// A `show table` answer arriving from the connection.
pub struct TableDump {
    command: String,
    rx: mpsc::Receiver<Result<Bytes, ClientError>>,
}

impl TableDump {
    pub(crate) fn new(command: String, rx: mpsc::Receiver<Result<Bytes, ClientError>>) -> Self {
        TableDump { command, rx }
    }

    /// Parses the dump to its end, calling `f` for every header and entry as they arrive.
    pub async fn for_each(mut self, mut f: impl FnMut(TableItem<'_>)) -> Result<DumpStats, ClientError> {
        let mut parser = EntryParser::new();
        let mut stats = DumpStats::default();
        let mut first = true;
        loop {
            let chunk = match self.rx.recv().await {
                Some(Ok(c)) if c.is_empty() => return Ok(stats),
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err(e),
                None => return Err(ClientError::Disconnected("dump cut short".into())),
            };
            if first {
                first = false;
                if let Err(error) = check_answer(&chunk) {
                    return Err(self.error_with_rest(error).await);
                }
            }
            stats.bytes += chunk.len() as u64;
            for line in crate::proto::table::lines(&chunk) {
                match parser.parse_line(line) {
                    Line::Header(h) => {
                        stats.tables += 1;
                        f(TableItem::Header(h));
                    }
                    Line::Entry(e) => {
                        stats.entries += 1;
                        f(TableItem::Entry(e));
                    }
                    Line::Denied => {
                        return Err(ClientError::Haproxy {
                            command: self.command.clone(),
                            error: HaproxyError::classify(
                                "contents not dumped due to insufficient privileges (the socket needs 'level operator' or above)",
                            ),
                        })
                    }
                    Line::Invalid(l, why) => {
                        stats.invalid += 1;
                        warn!(command = %self.command, reason = why, line = %String::from_utf8_lossy(l), "skipped a line of a table dump");
                    }
                }
            }
        }
    }

    /// The error text can span several lines and chunks; collect it whole (it is short).
    async fn error_with_rest(&mut self, mut error: HaproxyError) -> ClientError {
        while let Some(Ok(c)) = self.rx.recv().await {
            if c.is_empty() {
                break;
            }
            error.text.push('\n');
            error.text.push_str(String::from_utf8_lossy(&c).trim_end());
        }
        ClientError::Haproxy { command: self.command.clone(), error }
    }
}
