//! The task that owns one target's connection and pipelines every command sent to it.
//!
//! Requests arrive over a bounded channel; the actor writes them in batches without waiting for
//! answers, remembers who asked in a queue, and matches answers to askers in order as they are
//! framed. A streamed answer (a table dump) is handed on in chunks of whole lines through a bounded
//! channel, so a slow reader slows the socket, not memory. Commands are written from the same
//! `select!` that reads answers, so the two sides never wait on each other (HAProxy writing a long
//! dump while our next commands wait unread); the commands in flight are capped in number and
//! bytes, which bounds what is buffered. On any failure every pending asker gets an error, the
//! connection is dropped, and the next request reconnects after an exponential backoff.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, warn};

use super::connection::Connection;
use super::{ClientError, ClientOptions};
use crate::proto::frame::{self, Step};
use crate::target::Target;

/// Most bytes of commands written in one go.
const WRITE_BATCH: usize = 64 * 1024;
/// How much is read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// Answers up to this long are copied out of the read buffer rather than sliced from it.
const SHORT_ANSWER: usize = 4096;

pub(crate) enum Reply {
    Whole(oneshot::Sender<Result<Bytes, ClientError>>),
    Stream(mpsc::Sender<Result<Bytes, ClientError>>),
}

/// One command line (with its `\n`), or an empty line meaning "just make sure you are connected".
pub(crate) struct Request {
    pub line: Vec<u8>,
    pub reply: Reply,
}

struct Pending {
    reply: Reply,
    /// Whether part of the answer was consumed (a prompt can only precede an answer).
    started: bool,
    body: BytesMut,
    /// The asker of a stream went away: read the rest of its answer and drop it.
    discard: bool,
    /// Length of the command line, counted in flight until its answer ends.
    len: usize,
}

pub(crate) struct Actor {
    target: Arc<Target>,
    opts: Arc<ClientOptions>,
    rx: mpsc::Receiver<Request>,
    conn: Option<Connection>,
    pending: VecDeque<Pending>,
    /// Bytes of the commands in `pending`.
    in_flight_bytes: usize,
    /// Command bytes queued and not yet written. They are written from the same `select!` that
    /// reads, so a long answer HAProxy is writing never waits on a write of ours (and small
    /// writes, which cost the socket's send buffer far more than their length, cannot fill it
    /// while we stop reading).
    out: BytesMut,
    backoff: Duration,
    next_attempt: Option<Instant>,
    last_error: String,
    /// Set by `Client::reconnect`: open a new connection for the next command sent while idle.
    reconnect: Arc<AtomicBool>,
    /// Set by `Client::revive`: the target answers again, skip the backoff.
    revival: Arc<super::Revival>,
}

impl Actor {
    pub fn new(
        target: Arc<Target>,
        opts: Arc<ClientOptions>,
        rx: mpsc::Receiver<Request>,
        reconnect: Arc<AtomicBool>,
        revival: Arc<super::Revival>,
    ) -> Self {
        let backoff = opts.backoff_min;
        Actor {
            target,
            opts,
            rx,
            conn: None,
            pending: VecDeque::new(),
            in_flight_bytes: 0,
            out: BytesMut::new(),
            backoff,
            next_attempt: None,
            last_error: String::new(),
            reconnect,
            revival,
        }
    }

    pub async fn run(mut self) {
        loop {
            if self.conn.is_none() {
                let Some(req) = self.rx.recv().await else { return };
                if !self.ensure_connected(req).await {
                    continue;
                }
            }
            // Asked to start afresh while commands are in flight: no new command is taken until
            // they are answered, so none goes out on the old connection (after a master-worker
            // reload it still reaches the old worker, whose runtime state is about to vanish).
            let draining = self.reconnect.load(Ordering::Acquire) && !self.pending.is_empty();
            let room = self.room() && !draining;
            let conn = self.conn.as_mut().expect("connected above");
            let deadline = Instant::now() + self.opts.read_timeout;
            conn.buf.reserve(READ_CHUNK);
            tokio::select! {
                read = conn.reader.read_buf(&mut conn.buf) => match read {
                    Ok(0) => self.fail("connection closed by HAProxy".into()),
                    Ok(_) => {
                        if let Err(e) = self.deliver().await {
                            self.fail(e);
                        }
                    }
                    Err(e) => self.fail(format!("read failed: {e}")),
                },
                wrote = conn.writer.write(&self.out), if !self.out.is_empty() => match wrote {
                    Ok(0) => self.fail("connection closed by HAProxy".into()),
                    Ok(n) => self.out.advance(n),
                    Err(e) => self.fail(format!("write failed: {e}")),
                },
                req = self.rx.recv(), if room => match req {
                    // Asked to start afresh (`Client::reconnect`): once nothing is in flight, the
                    // next command goes on a new connection.
                    Some(req) if self.pending.is_empty() && self.reconnect.swap(false, Ordering::AcqRel) => {
                        debug!(target = %self.target, "reconnecting on request");
                        self.conn = None;
                        self.ensure_connected(req).await;
                    }
                    Some(req) => self.queue(req),
                    None if self.pending.is_empty() => return,
                    // Every handle is gone: answer what is in flight, then stop.
                    None => self.drain().await,
                },
                _ = sleep_until(deadline), if !self.pending.is_empty() => {
                    self.fail(format!("no answer within {:?}", self.opts.read_timeout));
                }
            }
        }
    }

    /// Whether another command may be written now.
    fn room(&self) -> bool {
        self.pending.len() < self.opts.max_in_flight && self.in_flight_bytes < self.opts.max_in_flight_bytes
    }

    /// Connects for `req` unless in a backoff period; answers `req` itself if it cannot.
    async fn ensure_connected(&mut self, req: Request) -> bool {
        if self.revival.skip_backoff.swap(false, Ordering::AcqRel) {
            self.next_attempt = None;
            self.backoff = self.opts.backoff_min;
        }
        if let Some(at) = self.next_attempt {
            let now = Instant::now();
            if now < at {
                let err = ClientError::Unavailable { retry_in: at - now, last_error: self.last_error.clone() };
                answer_err(req.reply, err).await;
                return false;
            }
        }
        match Connection::open(&self.target, self.opts.connect_timeout, self.opts.cli_timeout).await {
            Ok(conn) => {
                debug!(target = %self.target, "connected");
                self.conn = Some(conn);
                self.backoff = self.opts.backoff_min;
                self.next_attempt = None;
                self.queue(req);
                true
            }
            Err(e) => {
                self.last_error = e.to_string();
                self.next_attempt = Some(Instant::now() + self.backoff);
                warn!(target = %self.target, error = %e, retry_in = ?self.backoff, "cannot connect");
                self.backoff = (self.backoff * 2).min(self.opts.backoff_max);
                answer_err(req.reply, e).await;
                false
            }
        }
    }

    /// Queues `first` and whatever else is already asked for, up to the batch and in-flight
    /// limits, for the loop to write.
    fn queue(&mut self, first: Request) {
        let mut next = Some(first);
        let mut batch = 0;
        while let Some(req) = next.take() {
            if req.line.is_empty() {
                // A connection probe: being here means we are connected.
                if let Reply::Whole(tx) = req.reply {
                    let _ = tx.send(Ok(Bytes::new()));
                }
            } else {
                self.out.extend_from_slice(&req.line);
                batch += req.line.len();
                self.in_flight_bytes += req.line.len();
                self.pending.push_back(Pending {
                    reply: req.reply,
                    started: false,
                    body: BytesMut::new(),
                    discard: false,
                    len: req.line.len(),
                });
            }
            if batch < WRITE_BATCH && self.room() {
                next = self.rx.try_recv().ok();
            }
        }
    }

    /// Hands every complete answer (and every complete line of a streamed one) to its asker.
    async fn deliver(&mut self) -> Result<(), String> {
        let conn = self.conn.as_mut().expect("deliver only when connected");
        while let Some(front) = self.pending.front_mut() {
            match frame::step(&conn.buf, !front.started) {
                Step::NeedMore => break,
                Step::Prompt(n) => conn.buf.advance(n),
                Step::Lines(n) => {
                    front.started = true;
                    let chunk = conn.buf.split_to(n).freeze();
                    match &front.reply {
                        Reply::Whole(_) => front.body.extend_from_slice(&chunk),
                        Reply::Stream(tx) if !front.discard => {
                            if tx.send(Ok(chunk)).await.is_err() {
                                front.discard = true;
                            }
                        }
                        Reply::Stream(_) => {}
                    }
                }
                Step::End { body, consumed } => {
                    // A short answer (most are a lone newline) is copied out, so the read buffer
                    // stays unshared and is reused; slicing it would pin a fresh 64 KiB buffer
                    // per read while thousands of pipelined answers wait for their askers.
                    let chunk = if body <= SHORT_ANSWER {
                        let copy = Bytes::copy_from_slice(&conn.buf[..body]);
                        conn.buf.advance(consumed);
                        copy
                    } else {
                        let chunk = conn.buf.split_to(body).freeze();
                        conn.buf.advance(consumed - body);
                        chunk
                    };
                    let done = self.pending.pop_front().expect("front exists");
                    self.in_flight_bytes -= done.len;
                    match done.reply {
                        Reply::Whole(tx) => {
                            let whole = if done.body.is_empty() {
                                chunk
                            } else {
                                let mut b = done.body;
                                b.extend_from_slice(&chunk);
                                b.freeze()
                            };
                            let _ = tx.send(Ok(whole));
                        }
                        Reply::Stream(tx) if !done.discard => {
                            // Chunks are never empty, so an empty one marks the end: a channel
                            // that closes without it was cut short.
                            if !chunk.is_empty() {
                                let _ = tx.send(Ok(chunk)).await;
                            }
                            let _ = tx.send(Ok(Bytes::new())).await;
                        }
                        Reply::Stream(_) => {}
                    }
                }
            }
        }
        // With nothing asked, only (part of) a prompt may be left over.
        if self.pending.is_empty() && !b"> ".starts_with(&conn.buf) {
            return Err(format!(
                "unsolicited data: {:?}",
                String::from_utf8_lossy(&conn.buf[..conn.buf.len().min(80)])
            ));
        }
        Ok(())
    }

    /// Answers everything in flight after the last handle was dropped.
    async fn drain(&mut self) {
        while !self.pending.is_empty() {
            let Some(conn) = self.conn.as_mut() else { return };
            conn.buf.reserve(READ_CHUNK);
            let deadline = Instant::now() + self.opts.read_timeout;
            tokio::select! {
                read = conn.reader.read_buf(&mut conn.buf) => match read {
                    Ok(n) if n > 0 => {
                        if let Err(e) = self.deliver().await {
                            return self.fail(e);
                        }
                    }
                    _ => return self.fail("connection lost while draining".into()),
                },
                wrote = conn.writer.write(&self.out), if !self.out.is_empty() => match wrote {
                    Ok(n) if n > 0 => self.out.advance(n),
                    _ => return self.fail("connection lost while draining".into()),
                },
                _ = sleep_until(deadline) => return self.fail("connection lost while draining".into()),
            }
        }
    }

    /// Drops the connection and tells every pending asker.
    fn fail(&mut self, why: String) {
        if !self.pending.is_empty() {
            warn!(target = %self.target, in_flight = self.pending.len(), error = %why, "connection failed");
        } else {
            debug!(target = %self.target, reason = %why, "idle connection dropped");
        }
        self.conn = None;
        self.in_flight_bytes = 0;
        self.out.clear();
        for p in self.pending.drain(..) {
            let err = ClientError::Disconnected(why.clone());
            match p.reply {
                Reply::Whole(tx) => {
                    let _ = tx.send(Err(err));
                }
                Reply::Stream(tx) => {
                    let _ = tx.try_send(Err(err));
                }
            }
        }
    }
}

async fn answer_err(reply: Reply, err: ClientError) {
    match reply {
        Reply::Whole(tx) => {
            let _ = tx.send(Err(err));
        }
        Reply::Stream(tx) => {
            let _ = tx.send(Err(err)).await;
        }
    }
}
