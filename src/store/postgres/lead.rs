//! Who leads, decided by PostgreSQL itself. A controller holds a session of its own (besides the
//! store's connections) on which it asks for the leader's advisory lock; the one that gets it
//! bumps the epoch in `sw_leader` and writes at that epoch from then on. The session asks the
//! server to end it after [`IDLE_END`] without a query, and the leader sends one every
//! [`HEARTBEAT`]: a leader that dies, is partitioned or is paused loses the lock within
//! `IDLE_END` (at once when its process dies: the server sees the socket close), and its own
//! lease ([`LEASE`], counted from each heartbeat's sending) ends before that, so it stops acting
//! before anyone else can start.

use std::time::Duration;

use tokio_postgres::NoTls;

use super::{schema, PgError};
use crate::config::PgConfig;
use crate::store::StoreError;

/// How often the leader proves it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(1000);
/// How often a follower asks for the lock (and says it is alive): a killed leader is replaced
/// this long after its death at most, plus the new leader's start.
pub const TRY_EVERY: Duration = Duration::from_millis(250);
/// How long after a heartbeat was sent the leader may act without another answered.
pub const LEASE: Duration = Duration::from_millis(3000);
/// How long the server keeps a silent session (and its lock): longer than [`LEASE`].
pub const IDLE_END: Duration = Duration::from_millis(4000);

/// The leader row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub epoch: i64,
    pub holder: String,
    /// When it took the lead, ms since the epoch.
    pub since: i64,
}

/// What taking the lead changed.
#[derive(Debug, Clone)]
pub struct Took {
    pub epoch: i64,
    pub previous: Leader,
}

/// One controller as the members table has it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Member {
    pub name: String,
    pub role: String,
    pub epoch: i64,
    pub api: String,
    /// When it was last heard from, ms since the epoch.
    pub seen: i64,
}

/// A controller's own session.
pub struct Session {
    client: tokio_postgres::Client,
    name: String,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Closing the socket releases the lock at once.
        self.conn.abort();
    }
}

impl Session {
    /// Connects as `cfg.name`, with the server told to end the session after [`IDLE_END`] idle.
    pub async fn open(cfg: &PgConfig) -> Result<Session, PgError> {
        let config = super::connect_config(cfg).map_err(|e| PgError::Unreachable(e.to_string()))?;
        let (client, connection) = tokio::time::timeout(super::pool::CONNECT_TIMEOUT, config.connect(NoTls))
            .await
            .map_err(|_| PgError::Unreachable("no connection within 3 s".into()))??;
        let conn = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "leader session closed");
            }
        });
        let s = Session { client, name: cfg.name.clone(), conn };
        s.client.batch_execute(&format!("SET idle_session_timeout = {}", IDLE_END.as_millis())).await?;
        Ok(s)
    }

    /// Whether the session still stands.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Takes the lead if no one holds it: the lock, then the epoch bumped.
    pub async fn try_lead(&self) -> Result<Option<Took>, PgError> {
        let row = self.client.query_one("SELECT pg_try_advisory_lock($1)", &[&schema::LEADER_LOCK]).await?;
        if !row.get::<_, bool>(0) {
            return Ok(None);
        }
        let now = crate::time::now_ms() as i64;
        // The bump waits for writes of the old epoch in flight (they hold the row shared).
        let row = self
            .client
            .query_one(
                "WITH old AS (SELECT epoch, holder, since FROM sw_leader WHERE id = 1 FOR UPDATE) \
                 UPDATE sw_leader SET epoch = old.epoch + 1, holder = $1, since = $2 FROM old WHERE sw_leader.id = 1 \
                 RETURNING sw_leader.epoch, old.epoch, old.holder, old.since",
                &[&self.name, &now],
            )
            .await?;
        Ok(Some(Took {
            epoch: row.get(0),
            previous: Leader { epoch: row.get(1), holder: row.get(2), since: row.get(3) },
        }))
    }

    /// Says this controller is alive (as `role`, at `epoch`, with its API at `api`) and reads the
    /// leader row.
    pub async fn heartbeat(&self, role: &str, epoch: i64, api: &str) -> Result<Leader, PgError> {
        let now = crate::time::now_ms() as i64;
        self.client
            .execute(
                "INSERT INTO sw_members (name, role, epoch, api, seen) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO UPDATE SET role = excluded.role, epoch = excluded.epoch, \
                 api = excluded.api, seen = excluded.seen",
                &[&self.name, &role, &epoch, &api, &now],
            )
            .await?;
        leader_row(&self.client).await
    }

    /// Gives the lead up (a clean shutdown): a follower takes it at its next try.
    pub async fn resign(&self) {
        let _ = self.client.execute("SELECT pg_advisory_unlock($1)", &[&schema::LEADER_LOCK]).await;
    }
}

async fn leader_row(c: &tokio_postgres::Client) -> Result<Leader, PgError> {
    let row = c.query_one("SELECT epoch, holder, since FROM sw_leader WHERE id = 1", &[]).await?;
    Ok(Leader { epoch: row.get(0), holder: row.get(1), since: row.get(2) })
}

/// The leader row and every member, for `check`.
pub async fn census(cfg: &PgConfig) -> Result<(Leader, Vec<Member>), StoreError> {
    let s = Session::open(cfg).await?;
    let leader = leader_row(&s.client).await?;
    let rows = s
        .client
        .query("SELECT name, role, epoch, api, seen FROM sw_members ORDER BY name", &[])
        .await
        .map_err(PgError::from)?;
    let members = rows
        .iter()
        .map(|r| Member { name: r.get(0), role: r.get(1), epoch: r.get(2), api: r.get(3), seen: r.get(4) })
        .collect();
    Ok((leader, members))
}
