//! Small listings for people (`blocks`, `audit`, `history`): aligned columns, the header in bold
//! only on a terminal (and not with `NO_COLOR`), the last column left unpadded.

use std::io::{self, IsTerminal, Write};

/// Whether to use colour on standard output.
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub fn write_table(out: &mut impl Write, headers: &[&str], rows: &[Vec<String>], colour: bool) -> io::Result<()> {
    let rows: Vec<Vec<String>> =
        rows.iter().map(|r| r.iter().map(|c| super::printable(c).into_owned()).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut s = String::new();
        let cells: Vec<&str> = cells.collect();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_owned()
    };
    let head = line(&mut headers.iter().copied());
    if colour {
        writeln!(out, "\x1b[1m{head}\x1b[0m")?;
    } else {
        writeln!(out, "{head}")?;
    }
    for r in &rows {
        writeln!(out, "{}", line(&mut r.iter().map(String::as_str)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_without_trailing_spaces() {
        let mut out = Vec::new();
        let rows = vec![
            vec!["10.0.0.1".into(), "tag".into(), "x".into()],
            vec!["10.0.0.0/24".into(), "acl".into(), "".into()],
        ];
        write_table(&mut out, &["KEY", "ACTION", "REASON"], &rows, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "KEY          ACTION  REASON\n10.0.0.1     tag     x\n10.0.0.0/24  acl\n"
        );
    }
}
