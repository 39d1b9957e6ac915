//! Serving the router on every configured listener: TCP addresses and Unix sockets (created with
//! mode 0600, a stale socket file replaced). Listeners are bound before the daemon starts, so a
//! port in use is reported at start-up, not discovered later.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;

use axum::Router;
use tokio::net::{TcpListener, UnixListener};

use crate::config::Listen;

pub enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

/// Binds every listener; fails with the address that could not be bound.
pub async fn bind(listen: &[Listen]) -> anyhow::Result<Vec<Bound>> {
    use anyhow::Context;
    let mut out = Vec::new();
    for l in listen {
        match l {
            Listen::Tcp(addr) => {
                out.push(Bound::Tcp(TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?))
            }
            Listen::Unix(path) => {
                if path.exists() {
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

/// Serves `router` on every bound listener until `shutdown` resolves.
pub async fn serve(router: Router, bound: Vec<Bound>, shutdown: impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for b in bound {
        let (router, mut rx) = (router.clone(), rx.clone());
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        match b {
            Bound::Tcp(l) => {
                tasks.spawn(async move {
                    let _ = axum::serve(l, router).with_graceful_shutdown(stop).await;
                });
            }
            Bound::Unix(l, path) => {
                tasks.spawn(async move {
                    let _ = axum::serve(l, router).with_graceful_shutdown(stop).await;
                    let _ = std::fs::remove_file(path);
                });
            }
        }
    }
    shutdown.await;
    let _ = tx.send(true);
    while tasks.join_next().await.is_some() {}
}
