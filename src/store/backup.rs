//! The backup format: JSON Lines, versioned, one record a line, the same for every backend (it
//! is how a store moves to another backend too). A header line, then blocks, offenders, allowlist
//! entries, owned keys and audit records, then an end line counting the records, so a truncated
//! file is told from a complete one:
//!
//! ```text
//! {"header":{"kind":"stickwarden-store-backup","format":1,"created":"2026-12-02T07:00:00.000Z","last_audit_id":41}}
//! {"block":{"key":"10.0.0.1/32","level":1,"actions":["tag"],...}}
//! {"offender":{"key":"10.0.0.1/32","offender":{"score":{...},"offences":[...],"last_seen":...}}}
//! {"allow":{"net":"192.0.2.0/24","reason":"office","actor":"alice","since":...,"until":null}}
//! {"owned":{"key":"10.0.0.1/32","at":1764658800000}}
//! {"audit":{"id":41,"at":...,"event":"block",...}}
//! {"end":{"records":5}}
//! ```
//!
//! A reader refuses a file of a newer format, a line that does not parse (naming its number),
//! and a file without its end line or whose count differs, before anything is written.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use super::model::{AllowEntry, AuditRecord, Block, Offender};
use crate::time::Millis;

/// The `kind` of a backup's header.
pub const KIND: &str = "stickwarden-store-backup";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub kind: String,
    pub format: u32,
    /// RFC 3339.
    pub created: String,
    pub last_audit_id: u64,
}

/// One line of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Line {
    Header(Header),
    Block(Block),
    Offender { key: String, offender: Offender },
    Allow(AllowEntry),
    Owned { key: String, at: Millis },
    Audit(AuditRecord),
    End { records: u64 },
}

/// What a backup holds, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub blocks: u64,
    pub offenders: u64,
    pub allow: u64,
    pub owned: u64,
    pub audit: u64,
}

impl Counts {
    pub fn records(&self) -> u64 {
        self.blocks + self.offenders + self.allow + self.owned + self.audit
    }

    /// Counts `line` (the header and the end line count nothing).
    pub fn count(&mut self, line: &Line) {
        match line {
            Line::Block(_) => self.blocks += 1,
            Line::Offender { .. } => self.offenders += 1,
            Line::Allow(_) => self.allow += 1,
            Line::Owned { .. } => self.owned += 1,
            Line::Audit(_) => self.audit += 1,
            Line::Header(_) | Line::End { .. } => {}
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} blocks, {} offenders, {} allowlist entries, {} owned keys, {} audit records",
            self.blocks, self.offenders, self.allow, self.owned, self.audit
        )
    }
}

/// Writes lines, counting them; [`Writer::finish`] writes the end line.
pub struct Writer<W: Write> {
    out: W,
    counts: Counts,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, last_audit_id: u64) -> std::io::Result<Writer<W>> {
        let header = Header {
            kind: KIND.into(),
            format: super::manifest::BACKUP_FORMAT,
            created: crate::time::rfc3339(crate::time::now_ms()),
            last_audit_id,
        };
        write_line(&mut out, &Line::Header(header))?;
        Ok(Writer { out, counts: Counts::default() })
    }

    pub fn line(&mut self, line: &Line) -> std::io::Result<()> {
        self.counts.count(line);
        write_line(&mut self.out, line)
    }

    /// Writes the end line and flushes; gives back the output and what was written.
    pub fn finish(mut self) -> std::io::Result<(W, Counts)> {
        write_line(&mut self.out, &Line::End { records: self.counts.records() })?;
        self.out.flush()?;
        Ok((self.out, self.counts))
    }
}

fn write_line<W: Write>(out: &mut W, line: &Line) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")
}

/// Reads a backup from `input`, calling `each` with every record in order (not the header nor
/// the end line). Every line is checked; the first problem is returned with its line number.
/// Call it once with a no-op `each` to validate a file before writing anything.
pub fn read(input: impl BufRead, mut each: impl FnMut(Line) -> Result<(), String>) -> Result<(Header, Counts), String> {
    let mut header = None;
    let mut counts = Counts::default();
    let mut ended = false;
    for (i, text) in input.lines().enumerate() {
        let n = i + 1;
        let text = text.map_err(|e| format!("line {n}: cannot read: {e}"))?;
        if ended {
            return Err(format!("line {n}: data after the end line"));
        }
        let line: Line = serde_json::from_str(&text).map_err(|e| format!("line {n}: {e}"))?;
        match line {
            Line::Header(h) if n == 1 => {
                if h.kind != KIND {
                    return Err(format!("line 1: not a stickwarden store backup (kind '{}')", h.kind));
                }
                if h.format > super::manifest::BACKUP_FORMAT {
                    return Err(format!(
                        "line 1: a backup of format {} (this stickwarden reads format {} at most)",
                        h.format,
                        super::manifest::BACKUP_FORMAT
                    ));
                }
                header = Some(h);
            }
            _ if n == 1 => return Err("line 1: a backup starts with its header line".into()),
            Line::Header(_) => return Err(format!("line {n}: a second header")),
            Line::End { records } => {
                if records != counts.records() {
                    return Err(format!(
                        "line {n}: the end line counts {records} records, the file has {}",
                        counts.records()
                    ));
                }
                ended = true;
            }
            other => {
                counts.count(&other);
                each(other).map_err(|e| format!("line {n}: {e}"))?;
            }
        }
    }
    let header = header.ok_or("the file is empty")?;
    if !ended {
        return Err("the file ends before its end line: it is truncated".into());
    }
    Ok((header, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(lines: &[Line]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), 9).unwrap();
        for l in lines {
            w.line(l).unwrap();
        }
        w.finish().unwrap().0
    }

    #[test]
    fn round_trip_and_every_damage_refused() {
        let lines = [
            Line::Owned { key: "10.0.0.1/32".into(), at: 5 },
            Line::Offender { key: "10.0.0.1/32".into(), offender: Offender::default() },
        ];
        let bytes = backup(&lines);
        let mut seen = Vec::new();
        let (h, c) = read(&bytes[..], |l| {
            seen.push(l);
            Ok(())
        })
        .unwrap();
        assert_eq!((h.last_audit_id, c.owned, c.offenders, c.records()), (9, 1, 1, 2));
        assert_eq!(seen, lines);

        let text = String::from_utf8(bytes).unwrap();
        let cut: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert!(read(cut.as_bytes(), |_| Ok(())).unwrap_err().contains("truncated"));
        let bad = text.replacen("\"owned\"", "\"owed\"", 1);
        assert!(read(bad.as_bytes(), |_| Ok(())).unwrap_err().starts_with("line 2:"));
        let lying = text.replace("{\"end\":{\"records\":2}}", "{\"end\":{\"records\":3}}");
        assert!(read(lying.as_bytes(), |_| Ok(())).unwrap_err().contains("counts 3 records, the file has 2"));
        let newer = text.replace("\"format\":1", "\"format\":99");
        assert!(read(newer.as_bytes(), |_| Ok(())).unwrap_err().contains("format 99"));
        assert!(read(&b""[..], |_| Ok(())).unwrap_err().contains("empty"));
        let headless: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        assert!(read(headless.as_bytes(), |_| Ok(())).unwrap_err().contains("starts with its header"));
    }
}
