//! One socket to a Runtime API, opened and put into the mode the client relies on.
//!
//! Opening sends `prompt` (interactive: the connection stays open and many commands can be in
//! flight), `set severity-output number` (errors become `[3]: ...`, see `proto::error`) and
//! `set timeout cli` (the idle keep-alive, instead of HAProxy's 10 s default), and checks that each
//! was accepted. The reading and writing halves are handed to the client actor.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

use super::ClientError;
use crate::proto::frame::{self, Step};
use crate::target::Target;

pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// An open, set-up Runtime API connection.
pub(crate) struct Connection {
    pub reader: Reader,
    pub writer: Writer,
    /// Bytes read past the set-up answers (normally a prompt).
    pub buf: BytesMut,
}

/// The two halves of a fresh socket to `target`.
async fn connect(target: &Target, connect_timeout: Duration) -> Result<(Reader, Writer), ClientError> {
    let connect = async {
        Ok::<_, std::io::Error>(match target {
            Target::Unix(path) | Target::Master(path) => {
                let (r, w) = UnixStream::connect(path).await?.into_split();
                (Box::new(r) as Reader, Box::new(w) as Writer)
            }
            Target::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                (Box::new(r) as Reader, Box::new(w) as Writer)
            }
        })
    };
    timeout(connect_timeout, connect)
        .await
        .map_err(|_| ClientError::ConnectTimeout(connect_timeout))?
        .map_err(ClientError::Connect)
}

/// One command on a connection of its own, in HAProxy's default mode (it answers and closes):
/// what a new client would see. A persistent connection stays with the process it was opened to,
/// which after a master-worker reload is the old worker; this reaches the current one.
pub(crate) async fn once(target: &Target, line: &[u8], limit: Duration) -> Result<Vec<u8>, ClientError> {
    let (mut reader, mut writer) = connect(target, limit).await?;
    let exchange = async {
        writer.write_all(&[target.command_prefix(), line].concat()).await?;
        // Half-close: the master CLI answers a non-interactive `@1` command only then.
        writer.shutdown().await?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    match timeout(limit, exchange).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(ClientError::Disconnected(e.to_string())),
        Err(_) => Err(ClientError::Disconnected(format!("no answer within {limit:?}"))),
    }
}

impl Connection {
    pub async fn open(target: &Target, connect_timeout: Duration, cli_timeout: Duration) -> Result<Self, ClientError> {
        let (reader, writer) = connect(target, connect_timeout).await?;
        let mut conn = Connection { reader, writer, buf: BytesMut::with_capacity(64 * 1024) };
        let secs = cli_timeout.as_secs().max(1);
        // The master CLI takes neither setting (and each `@1` command opens a fresh worker
        // session, so they would not carry over): its answers are told apart by their text.
        // The master answers `prompt` with its prompt alone (no empty line), which the framer then
        // strips before the first answer.
        let (setup, expected): (String, &[&str]) = match target {
            Target::Master(_) => ("prompt\n".into(), &[]),
            _ => (
                format!("prompt\nset severity-output number\nset timeout cli {secs}\n"),
                &["prompt", "set severity-output number", "set timeout cli"],
            ),
        };
        timeout(connect_timeout, conn.handshake(setup.as_bytes(), expected))
            .await
            .map_err(|_| ClientError::ConnectTimeout(connect_timeout))??;
        Ok(conn)
    }

    async fn handshake(&mut self, setup: &[u8], answers: &[&str]) -> Result<(), ClientError> {
        self.writer.write_all(setup).await.map_err(ClientError::Connect)?;
        for &expected in answers {
            let body = self.read_whole_answer().await?;
            if !body.is_empty() {
                return Err(ClientError::Unexpected {
                    command: expected.to_owned(),
                    text: String::from_utf8_lossy(&body).trim_end().to_owned(),
                });
            }
        }
        if answers.is_empty() {
            // A master CLI: its prompt must come back, or this is not one.
            while self.buf.len() < frame::MASTER_PROMPT.len() {
                if self.reader.read_buf(&mut self.buf).await.map_err(ClientError::Connect)? == 0 {
                    return Err(ClientError::Disconnected("closed by HAProxy during set-up".into()));
                }
            }
            if !self.buf.starts_with(frame::MASTER_PROMPT) {
                return Err(ClientError::Unexpected {
                    command: "prompt".into(),
                    text: format!("not a master CLI (it answered '{}')", String::from_utf8_lossy(&self.buf).trim_end()),
                });
            }
        }
        Ok(())
    }

    /// Reads one complete answer (only used for the short set-up answers).
    async fn read_whole_answer(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut body = Vec::new();
        let mut start = true;
        loop {
            match frame::step(&self.buf, start) {
                Step::Prompt(n) => self.buf.advance(n),
                Step::Lines(n) => {
                    body.extend_from_slice(&self.buf.split_to(n));
                    start = false;
                }
                Step::End { body: b, consumed } => {
                    body.extend_from_slice(&self.buf[..b]);
                    self.buf.advance(consumed);
                    return Ok(body);
                }
                Step::NeedMore => {
                    if self.reader.read_buf(&mut self.buf).await.map_err(ClientError::Connect)? == 0 {
                        return Err(ClientError::Disconnected("closed by HAProxy during set-up".into()));
                    }
                }
            }
        }
    }
}
