//! Serving the router on every configured listener (TCP addresses and Unix sockets created with
//! mode 0600), hardened against hostile clients: a request head must arrive within
//! [`HEADER_TIMEOUT`] (which also closes a connection idle between requests), at most
//! `max_connections` are open at once (a connection is accepted only once it has a place),
//! kept under the process's file descriptor limit with a reserve for the HAProxy connections and
//! the store, and at the cap the oldest connection with no request in progress is closed to make
//! room. Listeners are bound before the daemon starts, so a
//! port in use or a path that is not a socket is reported at start-up, not discovered later.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

use crate::config::Listen;

/// A request head (request line and headers) must arrive whole within this time from the moment
/// the server waits for it: a new connection, or one kept alive after an answer.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection being closed (evicted, or the daemon stopping) may finish its answer.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// File descriptors kept free for everything but API clients: the store, the runtime, logs, and
/// a few per HAProxy target (the persistent connection, reload watcher, reconciler, check).
const FD_RESERVE_BASE: u64 = 64;
const FD_RESERVE_PER_TARGET: u64 = 8;

pub enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

/// Binds every listener; fails with the address that could not be bound. A Unix path that exists
/// is replaced only when it is a socket nobody listens on: a regular file (or anything else) there
/// is refused, and a live socket means another daemon.
pub async fn bind(listen: &[Listen]) -> anyhow::Result<Vec<Bound>> {
    use anyhow::{bail, Context};
    let mut out = Vec::new();
    for l in listen {
        match l {
            Listen::Tcp(addr) => {
                out.push(Bound::Tcp(TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?))
            }
            Listen::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        bail!(
                            "cannot listen on unix:{}: it exists and is not a socket; refusing to replace it \
                             (choose another path in [api] listen, or move the file away)",
                            path.display()
                        );
                    }
                    if tokio::net::UnixStream::connect(path).await.is_ok() {
                        bail!("cannot listen on unix:{}: another process is listening there", path.display());
                    }
                    std::fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
                }
                let listener =
                    UnixListener::bind(path).with_context(|| format!("cannot listen on unix:{}", path.display()))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot set mode 0600 on {}", path.display()))?;
                out.push(Bound::Unix(listener, path.clone()));
            }
        }
    }
    Ok(out)
}

/// How many API connections may be open at once: the configured `max_connections`, lowered to
/// what the file descriptor limit leaves after the reserve for `targets` HAProxy targets.
pub fn connection_cap(max_connections: usize, targets: usize) -> usize {
    let reserve = FD_RESERVE_BASE + FD_RESERVE_PER_TARGET * targets as u64;
    match open_files_limit() {
        Some(limit) => max_connections.min(limit.saturating_sub(reserve).max(8) as usize),
        None => max_connections,
    }
}

/// The soft limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// The open connections, oldest first, each with its count of requests in progress. A
/// connection counts until its task has ended and its descriptor is closed, evicted ones too.
struct Registry {
    cap: usize,
    open: Mutex<(u64, BTreeMap<u64, Arc<Conn>>)>,
    /// A connection ended: a slot may be free.
    freed: Notify,
}

#[derive(Default)]
struct Conn {
    /// Accepted: a place taken for the next connection has none yet, and is never evicted.
    live: std::sync::atomic::AtomicBool,
    busy: AtomicUsize,
    evicted: std::sync::atomic::AtomicBool,
    evict: Notify,
}

/// A connection's place in the registry, given back when it ends.
struct Slot {
    id: u64,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.open.lock().unwrap_or_else(|e| e.into_inner()).1.remove(&self.id);
        self.registry.freed.notify_waiters();
    }
}

impl Registry {
    /// A place for the next connection, taken before it is accepted, so that open connections
    /// never pass the cap (and the descriptor limit under it). At the cap, the oldest connection
    /// with no request in progress is told to close, and the place is taken once it has; the
    /// next connection waits in the listen backlog meanwhile.
    async fn admit(self: &Arc<Self>) -> Slot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut guard = self.open.lock().unwrap_or_else(|e| e.into_inner());
                let (next, open) = &mut *guard;
                if open.len() < self.cap {
                    *next += 1;
                    let conn = Arc::new(Conn::default());
                    open.insert(*next, conn.clone());
                    return Slot { id: *next, conn, registry: self.clone() };
                }
                let idle = open.values().find(|c| {
                    c.live.load(Ordering::Relaxed)
                        && c.busy.load(Ordering::Relaxed) == 0
                        && !c.evicted.load(Ordering::Relaxed)
                });
                if let Some(c) = idle {
                    c.evicted.store(true, Ordering::Relaxed);
                    c.evict.notify_one();
                }
            }
            freed.await;
        }
    }
}

/// Serves `router` on every bound listener until `shutdown` resolves, with at most `cap` open
/// connections in all ([`connection_cap`]).
pub async fn serve(router: Router, bound: Vec<Bound>, cap: usize, shutdown: impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = watch::channel(false);
    let registry = Arc::new(Registry { cap: cap.max(1), open: Mutex::new((0, BTreeMap::new())), freed: Notify::new() });
    let mut tasks = tokio::task::JoinSet::new();
    for b in bound {
        let (router, registry, rx) = (router.clone(), registry.clone(), rx.clone());
        tasks.spawn(async move {
            match b {
                Bound::Tcp(l) => accept_loop(|| async { l.accept().await.map(|(s, _)| s) }, router, registry, rx).await,
                // Its socket file is removed by `run` when the daemon exits.
                Bound::Unix(l, _) => {
                    accept_loop(|| async { l.accept().await.map(|(s, _)| s) }, router, registry, rx).await
                }
            }
        });
    }
    shutdown.await;
    let _ = tx.send(true);
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop<S, F, Fut>(accept: F, router: Router, registry: Arc<Registry>, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
{
    let mut conns = tokio::task::JoinSet::new();
    let mut slot = None;
    loop {
        let accepted = tokio::select! {
            s = registry.admit(), if slot.is_none() => {
                slot = Some(s);
                continue;
            }
            r = accept(), if slot.is_some() => r,
            _ = stop.wait_for(|s| *s) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        match accepted {
            Ok(stream) => {
                let slot = slot.take().expect("accepted with a slot");
                slot.conn.live.store(true, Ordering::Relaxed);
                conns.spawn(serve_connection(stream, router.clone(), slot, stop.clone()));
            }
            Err(e) => {
                // Out of file descriptors (or a transient accept error): wait instead of spinning.
                warn!(error = %e, "API: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Connections still open finish their answers within the grace period.
    let _ = tokio::time::timeout(CLOSE_GRACE + Duration::from_secs(1), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

async fn serve_connection<S>(stream: S, router: Router, slot: Slot, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = slot.conn.clone();
    let inner = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (conn, inner) = (conn.clone(), inner.clone());
        async move {
            conn.busy.fetch_add(1, Ordering::Relaxed);
            let r = hyper::service::Service::call(&inner, req).await;
            conn.busy.fetch_sub(1, Ordering::Relaxed);
            r
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let http = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(http);
    tokio::select! {
        _ = http.as_mut() => return,
        _ = slot.conn.evict.notified() => {
            debug!("API connection evicted: the cap was reached");
            // Chosen because it had no request in progress: closed now, its descriptor freed at
            // once (a graceful close would keep it while hyper waits for a request head, and
            // evicted connections no longer count against the cap).
            if slot.conn.busy.load(Ordering::Relaxed) == 0 {
                return;
            }
        }
        _ = stop.wait_for(|s| *s) => {}
    }
    http.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_GRACE, http).await;
}
