//! Progress on a terminal for long operator commands (`import`): a bar over a known number of
//! steps, and an elapsed-time spinner while waiting for one long step. Drawn on standard error,
//! at most ten times a second, and only when it is a terminal; otherwise silent.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Bar {
    enabled: bool,
    label: String,
    total: usize,
    started: Instant,
    drawn: Option<Instant>,
}

const WIDTH: usize = 30;
const EVERY: Duration = Duration::from_millis(100);

/// Whether progress is drawn: standard error is a terminal.
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

impl Bar {
    pub fn new(label: &str, total: usize, enabled: bool) -> Bar {
        Bar { enabled, label: label.to_owned(), total: total.max(1), started: Instant::now(), drawn: None }
    }

    /// Records `done` steps; redraws if the last drawing is old enough.
    pub fn set(&mut self, done: usize) {
        if !self.enabled || self.drawn.is_some_and(|t| t.elapsed() < EVERY) && done < self.total {
            return;
        }
        self.drawn = Some(Instant::now());
        let filled = (done.min(self.total) * WIDTH) / self.total;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {:>3}% {done}/{} {}",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            done.min(self.total) * 100 / self.total,
            self.total,
            self.label
        );
        let _ = err.flush();
    }

    /// Draws the full bar and ends its line.
    pub fn finish(mut self) {
        if self.enabled {
            self.drawn = None;
            self.set(self.total);
            eprintln!(" ({:.1}s)", self.started.elapsed().as_secs_f64());
        }
    }
}

/// Awaits `fut`, showing `label` and the time elapsed meanwhile.
pub async fn spin<F: Future>(label: &str, enabled: bool, fut: F) -> F::Output {
    if !enabled {
        return fut.await;
    }
    let started = Instant::now();
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let frames = ['|', '/', '-', '\\'];
    let mut i = 0;
    loop {
        tokio::select! {
            out = &mut fut => {
                eprintln!("\r{label} done in {:.1}s   ", started.elapsed().as_secs_f64());
                return out;
            }
            _ = tick.tick() => {
                eprint!("\r{} {label} {:.1}s", frames[i % frames.len()], started.elapsed().as_secs_f64());
                i += 1;
            }
        }
    }
}
