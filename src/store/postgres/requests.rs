//! Operator actions taken on a follower: written to `sw_requests` by the follower, claimed and
//! carried out by the leader (through its controller, as if asked on its own API), and answered
//! in the same row once HAProxy confirmed them. The follower waits for the answer; a request the
//! leader claimed but never answered (it died meanwhile) is reported as not confirmed, never as
//! done.

use serde::{Deserialize, Serialize};

use super::{PgError, PgStore};
use crate::store::StoreError;

/// A forwarded action: the checked operator action and who asked.
#[derive(Debug, Clone)]
pub struct Asked {
    pub id: i64,
    /// The action, as JSON (the daemon's `Manual`).
    pub op: String,
    pub actor: String,
}

/// The answer written back: the outcome's JSON, or the error's code and message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Done(serde_json::Value),
    Failed { code: String, message: String },
}

/// Writes a request; returns its id.
pub fn ask(pg: &PgStore, op: String, actor: &str, asked_by: &str) -> Result<i64, StoreError> {
    let (actor, asked_by) = (actor.to_owned(), asked_by.to_owned());
    pg.read(move |c| {
        let now = crate::time::now_ms() as i64;
        Ok(c.query_one(
            "INSERT INTO sw_requests (op, actor, asked_by, asked_at) VALUES ($1, $2, $3, $4) RETURNING id",
            &[&op, &actor, &asked_by, &now],
        )?
        .get(0))
    })
}

/// The answer to request `id`, once there is one.
pub fn answer_of(pg: &PgStore, id: i64) -> Result<Option<Answer>, StoreError> {
    let text: Option<String> = pg.read(move |c| {
        Ok(c.query_opt("SELECT answer FROM sw_requests WHERE id = $1", &[&id])?.and_then(|r| r.get(0)))
    })?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Backend(format!("request {id}: bad answer: {e}"))))
        .transpose()
}

/// Claims the unclaimed requests for `by`, oldest first (at most 32).
pub fn claim(pg: &PgStore, by: &str) -> Result<Vec<Asked>, StoreError> {
    let by = by.to_owned();
    pg.read(move |c| {
        let rows = c.query(
            "UPDATE sw_requests SET answered_by = $1 WHERE id IN \
             (SELECT id FROM sw_requests WHERE answered_by IS NULL ORDER BY id LIMIT 32 FOR UPDATE SKIP LOCKED) \
             RETURNING id, op, actor",
            &[&by],
        )?;
        let mut out: Vec<Asked> = rows.iter().map(|r| Asked { id: r.get(0), op: r.get(1), actor: r.get(2) }).collect();
        out.sort_by_key(|a| a.id);
        Ok(out)
    })
}

/// Answers request `id`.
pub fn answer(pg: &PgStore, id: i64, a: &Answer) -> Result<(), StoreError> {
    let text = serde_json::to_string(a).expect("answers serialize");
    pg.read(move |c| {
        let now = crate::time::now_ms() as i64;
        c.execute("UPDATE sw_requests SET answer = $1, answered_at = $2 WHERE id = $3", &[&text, &now, &id])?;
        Ok(())
    })
}

/// Drops answered requests older than `cutoff` (ms since the epoch).
pub fn prune(pg: &PgStore, cutoff: u64) -> Result<u64, StoreError> {
    let cutoff = cutoff as i64;
    pg.read(move |c| Ok(c.execute("DELETE FROM sw_requests WHERE answer IS NOT NULL AND asked_at < $1", &[&cutoff])?))
}

impl From<PgError> for Answer {
    fn from(e: PgError) -> Answer {
        Answer::Failed { code: "store_error".into(), message: e.to_string() }
    }
}
