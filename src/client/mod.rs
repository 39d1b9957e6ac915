//! The Runtime API client: a cheap-to-clone handle on one target's connection actor.
//!
//! Every method encodes a typed [`Command`], sends it down the actor's bounded channel and awaits
//! its answer, so many calls from many tasks are pipelined on one connection. Answers are checked
//! (`proto::error`) and parsed (`proto::*`) here, so callers see typed results or one
//! [`ClientError`]. Read-only commands are retried once after a dropped connection; writes are not
//! retried here (the caller knows whether repeating one is safe).

mod actor;
mod connection;
mod dump;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

pub use dump::{DumpStats, TableDump, TableItem};

use crate::proto::acl::{self, AclEntry, AclInfo};
use crate::proto::error::{check_answer, HaproxyError};
use crate::proto::info::Info;
use crate::proto::sess::{self, Session};
use crate::proto::table::{EntryParser, Line, TableInfo};
use crate::proto::{AclPattern, AclRef, Command, CommandError, KeyError, KeyType, TableKey, TableSelect};
use crate::target::Target;
use actor::{Actor, Reply, Request};

/// Connection settings; the defaults suit a local socket.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Longest wait for the next byte of an answer.
    pub read_timeout: Duration,
    /// Idle keep-alive asked of HAProxy with `set timeout cli` (its default is 10 s).
    pub cli_timeout: Duration,
    /// Longest command line sent, newline included (see `proto::command::DEFAULT_MAX_LINE`).
    pub max_line: usize,
    /// Commands written but not yet answered, at most.
    pub max_in_flight: usize,
    /// Bytes of commands queued or written but not yet answered, at most: bounds what sits in
    /// buffers while HAProxy is busy with a long answer.
    pub max_in_flight_bytes: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(10),
            cli_timeout: Duration::from_secs(600),
            max_line: crate::proto::command::DEFAULT_MAX_LINE,
            max_in_flight: 4096,
            max_in_flight_bytes: 128 * 1024,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// Everything that can go wrong talking to a Runtime API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("connection lost: {0}")]
    Disconnected(String),
    #[error("target unavailable (next attempt in {retry_in:?}; last error: {last_error})")]
    Unavailable { retry_in: Duration, last_error: String },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("HAProxy refused '{command}': {error}")]
    Haproxy { command: String, error: HaproxyError },
    #[error("unexpected answer to '{command}': {text}")]
    Unexpected { command: String, text: String },
    #[error("the client has stopped")]
    Stopped,
    /// This controller's lease ended ([`crate::lease`]): another may lead now, so nothing is sent.
    #[error("not sent: this controller no longer leads (its lease ended)")]
    NotLeader,
    /// A job that does not say where to apply an action (a block recorded without it, and a
    /// configuration that no longer has that part of `[block]`).
    #[error("{0}")]
    Unplaced(String),
    /// Some keys of a job of many were refused (the others were applied): which (sorted, for a
    /// binary search), and the first refusal.
    #[error("{} key(s) refused; the first: {first}", keys.len())]
    Refused { keys: Vec<crate::key::Key>, first: Box<ClientError> },
}

impl ClientError {
    /// The HAProxy error behind this one, if HAProxy answered with an error.
    pub fn haproxy(&self) -> Option<&HaproxyError> {
        match self {
            ClientError::Haproxy { error, .. } => Some(error),
            ClientError::Refused { first, .. } => first.haproxy(),
            _ => None,
        }
    }

    /// A failure of the connection rather than an answer: worth trying again later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Connect(_)
                | ClientError::ConnectTimeout(_)
                | ClientError::Disconnected(_)
                | ClientError::Unavailable { .. }
        )
    }

    fn retriable(&self) -> bool {
        matches!(self, ClientError::Disconnected(_))
    }
}

/// A handle on one target's connection actor. Clones share the connection.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Request>,
    opts: Arc<ClientOptions>,
    target: Arc<Target>,
    reconnect: Arc<std::sync::atomic::AtomicBool>,
    revival: Arc<Revival>,
}

/// Word that the target answers again ([`Client::revive`]): the connection's backoff is skipped
/// and whoever waits to retry ([`Client::revivals`]) retries now.
#[derive(Debug)]
pub(crate) struct Revival {
    pub(crate) skip_backoff: std::sync::atomic::AtomicBool,
    count: tokio::sync::watch::Sender<u64>,
}

impl Client {
    /// Starts the actor; the connection is opened by the first request. Needs a Tokio runtime.
    pub fn new(target: Target, opts: ClientOptions) -> Client {
        let (tx, rx) = mpsc::channel(opts.max_in_flight.max(1) * 2);
        let target = Arc::new(target);
        let opts = Arc::new(opts);
        let reconnect = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let revival = Arc::new(Revival {
            skip_backoff: std::sync::atomic::AtomicBool::new(false),
            count: tokio::sync::watch::channel(0).0,
        });
        tokio::spawn(Actor::new(target.clone(), opts.clone(), rx, reconnect.clone(), revival.clone()).run());
        Client { tx, opts, target, reconnect, revival }
    }

    /// Starts the actor and connects now, so that an unreachable target is reported at once.
    pub async fn connect(target: Target, opts: ClientOptions) -> Result<Client, ClientError> {
        let client = Client::new(target, opts);
        let (tx, rx) = oneshot::channel();
        client.submit(Request { line: Vec::new(), reply: Reply::Whole(tx) }).await?;
        rx.await.map_err(|_| ClientError::Stopped)??;
        Ok(client)
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    async fn submit(&self, req: Request) -> Result<(), ClientError> {
        self.tx.send(req).await.map_err(|_| ClientError::Stopped)
    }

    fn encode(&self, cmd: &Command) -> Result<Vec<u8>, ClientError> {
        let mut line = Vec::with_capacity(64);
        cmd.encode(&mut line, self.opts.max_line)?;
        let prefix = self.target.command_prefix();
        if !prefix.is_empty() {
            line.splice(0..0, prefix.iter().copied());
        }
        Ok(line)
    }

    /// Sends one command and returns its checked answer body (info prefix removed).
    pub async fn execute(&self, cmd: &Command) -> Result<Bytes, ClientError> {
        let line = self.encode(cmd)?;
        let mut tries = if cmd.is_read_only() { 2 } else { 1 };
        loop {
            tries -= 1;
            let (tx, rx) = oneshot::channel();
            self.submit(Request { line: line.clone(), reply: Reply::Whole(tx) }).await?;
            match rx.await.map_err(|_| ClientError::Stopped)? {
                Ok(body) => return checked(cmd, body),
                Err(e) if tries > 0 && e.retriable() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a command whose success is an empty answer.
    async fn execute_empty(&self, cmd: &Command) -> Result<(), ClientError> {
        let body = self.execute(cmd).await?;
        expect_empty(cmd, body)
    }

    /// Sends every command before awaiting any answer; each one's checked answer body, in order.
    /// For reads of many keys (`show table T key K`); nothing is retried.
    pub async fn execute_many(&self, cmds: &[Command]) -> Vec<Result<Bytes, ClientError>> {
        let mut waiting = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let sent = async {
                let line = self.encode(cmd)?;
                let (tx, rx) = oneshot::channel();
                self.submit(Request { line, reply: Reply::Whole(tx) }).await?;
                Ok::<_, ClientError>(rx)
            };
            waiting.push(sent.await);
        }
        let mut out = Vec::with_capacity(cmds.len());
        for (cmd, w) in cmds.iter().zip(waiting) {
            out.push(match w {
                Ok(rx) => match rx.await {
                    Ok(Ok(body)) => checked(cmd, body),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(ClientError::Stopped),
                },
                Err(e) => Err(e),
            });
        }
        out
    }

    /// Sends every command before awaiting any answer, for commands whose success is an empty
    /// answer (`set table`, `clear table`, `add acl`, `del acl`, `shutdown session`). One result per
    /// command, in order; nothing is retried.
    pub async fn pipeline(&self, cmds: &[Command]) -> Vec<Result<(), ClientError>> {
        let bodies = self.execute_many(cmds).await;
        cmds.iter().zip(bodies).map(|(cmd, b)| b.and_then(|b| expect_empty(cmd, b))).collect()
    }

    /// `show info` on a connection of its own, which reaches the process now serving the socket
    /// (after a master-worker reload, the new worker; the persistent connection stays with the
    /// old one until [`Client::reconnect`]).
    pub async fn show_info_fresh(&self) -> Result<Info, ClientError> {
        let limit = self.opts.connect_timeout.max(self.opts.read_timeout);
        let body = connection::once(&self.target, b"show info\n", limit).await?;
        Ok(Info::parse(&body))
    }

    /// Makes the next command sent while nothing is in flight open a new connection (to the
    /// process serving the socket now); the old one is dropped.
    pub fn reconnect(&self) {
        self.reconnect.store(true, std::sync::atomic::Ordering::Release);
    }

    /// The target answers again (seen on another connection): the next command connects at once,
    /// whatever the backoff, and [`Client::revivals`] tells those waiting to retry.
    pub fn revive(&self) {
        self.revival.skip_backoff.store(true, std::sync::atomic::Ordering::Release);
        self.revival.count.send_modify(|n| *n += 1);
    }

    /// Changes each time the target is seen answering again ([`Client::revive`]).
    pub fn revivals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revival.count.subscribe()
    }

    pub async fn show_info(&self) -> Result<Info, ClientError> {
        Ok(Info::parse(&self.execute(&Command::ShowInfo).await?))
    }

    /// Every stick table: name, key type, size, used.
    pub async fn list_tables(&self) -> Result<Vec<TableInfo>, ClientError> {
        let cmd = Command::ListTables;
        let body = self.execute(&cmd).await?;
        let mut parser = EntryParser::new();
        let mut out = Vec::new();
        for line in crate::proto::table::lines(&body) {
            match parser.parse_line(line) {
                Line::Header(h) => out.push(h.to_owned()),
                _ => return Err(unexpected(&cmd, line)),
            }
        }
        Ok(out)
    }

    /// The key type of `table`, or HAProxy's "No such table" error.
    pub async fn table_key_type(&self, table: &str) -> Result<KeyType, ClientError> {
        let tables = self.list_tables().await?;
        let Some(t) = tables.iter().find(|t| t.name == table) else {
            return Err(ClientError::Haproxy {
                command: format!("show table {table}"),
                error: HaproxyError::classify("No such table"),
            });
        };
        KeyType::from_header(&t.key_type).ok_or_else(|| ClientError::Unexpected {
            command: "show table".into(),
            text: format!("unknown key type '{}' of table {table}", t.key_type),
        })
    }

    /// Starts a `show table` dump; its entries stream through the returned [`TableDump`].
    pub async fn show_table(&self, table: &str, select: TableSelect) -> Result<TableDump, ClientError> {
        let cmd = Command::ShowTable { table: table.to_owned(), select };
        let line = self.encode(&cmd)?;
        let (tx, rx) = mpsc::channel(16);
        self.submit(Request { line, reply: Reply::Stream(tx) }).await?;
        Ok(TableDump::new(cmd.to_line(), rx))
    }

    /// `set table T key K data.f1 v1 data.f2 v2 ...` (applied under one lock).
    pub async fn set_table(
        &self,
        table: &str,
        key: TableKey,
        fields: &[(crate::proto::DataField, u64)],
    ) -> Result<(), ClientError> {
        self.execute_empty(&Command::SetTable { table: table.to_owned(), key, fields: fields.to_vec() }).await
    }

    /// Removes one entry; a missing key is not an error, an entry in use is.
    pub async fn clear_table_key(&self, table: &str, key: TableKey) -> Result<(), ClientError> {
        self.execute_empty(&Command::ClearTableKey { table: table.to_owned(), key }).await
    }

    pub async fn list_acls(&self) -> Result<Vec<AclInfo>, ClientError> {
        let cmd = Command::ListAcls;
        let body = self.execute(&cmd).await?;
        acl::parse_acl_list(&body).map_err(|text| ClientError::Unexpected { command: cmd.to_line(), text })
    }

    pub async fn show_acl(&self, acl_ref: &AclRef) -> Result<Vec<AclEntry>, ClientError> {
        let cmd = Command::ShowAcl { acl: acl_ref.clone() };
        let body = self.execute(&cmd).await?;
        acl::parse_acl_entries(&body).map_err(|text| ClientError::Unexpected { command: cmd.to_line(), text })
    }

    /// Whether `addr` matches a pattern of the ACL.
    pub async fn get_acl(&self, acl_ref: &AclRef, addr: IpAddr) -> Result<bool, ClientError> {
        let cmd = Command::GetAcl { acl: acl_ref.clone(), addr };
        let body = self.execute(&cmd).await?;
        acl::parse_get_acl(&body).map_err(|text| ClientError::Unexpected { command: cmd.to_line(), text })
    }

    pub async fn add_acl(&self, acl_ref: &AclRef, pattern: AclPattern) -> Result<(), ClientError> {
        self.execute_empty(&Command::AddAcl { acl: acl_ref.clone(), version: None, pattern }).await
    }

    pub async fn del_acl(&self, acl_ref: &AclRef, pattern: AclPattern) -> Result<(), ClientError> {
        self.execute_empty(&Command::DelAcl { acl: acl_ref.clone(), pattern }).await
    }

    /// Opens a new version of the ACL for an atomic replacement; returns its number.
    pub async fn prepare_acl(&self, acl_ref: &AclRef) -> Result<u32, ClientError> {
        let cmd = Command::PrepareAcl { acl: acl_ref.clone() };
        let body = self.execute(&cmd).await?;
        std::str::from_utf8(&body)
            .ok()
            .and_then(|t| t.trim_end().strip_prefix("New version created: "))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| unexpected(&cmd, &body))
    }

    /// Makes a prepared version the live one, atomically.
    pub async fn commit_acl(&self, acl_ref: &AclRef, version: u32) -> Result<(), ClientError> {
        self.execute_empty(&Command::CommitAcl { acl: acl_ref.clone(), version }).await
    }

    /// The maps HAProxy loaded.
    pub async fn list_maps(&self) -> Result<Vec<AclInfo>, ClientError> {
        let cmd = Command::ListMaps;
        let body = self.execute(&cmd).await?;
        acl::parse_acl_list(&body).map_err(|text| ClientError::Unexpected { command: cmd.to_line(), text })
    }

    /// The entries of a map.
    pub async fn show_map(&self, map: &AclRef) -> Result<Vec<acl::MapEntry>, ClientError> {
        let cmd = Command::ShowMap { map: map.clone() };
        let body = self.execute(&cmd).await?;
        acl::parse_map_entries(&body).map_err(|text| ClientError::Unexpected { command: cmd.to_line(), text })
    }

    pub async fn show_sess(&self) -> Result<Vec<Session>, ClientError> {
        let cmd = Command::ShowSess;
        let body = self.execute(&cmd).await?;
        sess::parse_sessions(&body).map_err(|text| ClientError::Unexpected { command: cmd.to_line(), text })
    }

    pub async fn shutdown_session(&self, ptr: u64) -> Result<(), ClientError> {
        self.execute_empty(&Command::ShutdownSession { ptr }).await
    }
}

fn checked(cmd: &Command, body: Bytes) -> Result<Bytes, ClientError> {
    match check_answer(&body) {
        Ok(b) => Ok(body.slice_ref(b)),
        Err(error) => Err(ClientError::Haproxy { command: cmd.to_line(), error }),
    }
}

fn expect_empty(cmd: &Command, body: Bytes) -> Result<(), ClientError> {
    if body.is_empty() {
        Ok(())
    } else {
        // Not prefixed as an error, but not the silence of success either: classify the text.
        let text = String::from_utf8_lossy(&body);
        Err(ClientError::Haproxy { command: cmd.to_line(), error: HaproxyError::classify(&text) })
    }
}

fn unexpected(cmd: &Command, text: &[u8]) -> ClientError {
    ClientError::Unexpected { command: cmd.to_line(), text: String::from_utf8_lossy(text).trim_end().to_owned() }
}
