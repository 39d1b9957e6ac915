//! The PostgreSQL schema, as numbered migrations applied in order at start (each in its own
//! transaction, under a lock so that two controllers starting together do not both apply it),
//! and the fence that makes the database itself refuse a write from a controller that no longer
//! leads: every data table has a statement trigger that compares the transaction's
//! `stickwarden.epoch` with the leader row, holding that row shared until commit, so a new
//! leader's epoch bump waits for writes in flight and every later write of the old epoch fails.

/// The schema version this build writes; a database at a newer one is refused.
pub const VERSION: i32 = 1;

/// The advisory lock held (for the whole session) by the leader.
pub const LEADER_LOCK: i64 = 0x5354_4943_4b57_4152; // "STICKWAR"
/// The advisory lock held (for one transaction) while migrating.
pub const MIGRATE_LOCK: i64 = 0x5354_4943_4b4d_4947; // "STICKMIG"

/// The SQLSTATE of a fenced write.
pub const FENCED: &str = "SW001";

/// Migration `n` (1-based) brings the schema from version `n - 1` to `n`.
pub const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE sw_leader (
    id int PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL,
    holder text NOT NULL,
    since bigint NOT NULL
);
INSERT INTO sw_leader VALUES (1, 0, '', 0);

CREATE FUNCTION sw_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    mine bigint := coalesce(nullif(current_setting('stickwarden.epoch', true), ''), '0')::bigint;
    now_at bigint;
BEGIN
    SELECT epoch INTO now_at FROM sw_leader WHERE id = 1 FOR SHARE;
    IF mine IS DISTINCT FROM now_at THEN
        RAISE EXCEPTION 'stickwarden: a write of epoch % refused: the leader is at epoch %', mine, now_at
            USING ERRCODE = 'SW001';
    END IF;
    RETURN NULL;
END $$;

CREATE TABLE sw_blocks (key text COLLATE "C" PRIMARY KEY, record text NOT NULL);
CREATE TABLE sw_offenders (key text COLLATE "C" PRIMARY KEY, last_at bigint NOT NULL, record text NOT NULL);
CREATE TABLE sw_allow (net text COLLATE "C" PRIMARY KEY, record text NOT NULL);
CREATE TABLE sw_owned (key text COLLATE "C" PRIMARY KEY, at bigint NOT NULL);
CREATE TABLE sw_audit (id bigint PRIMARY KEY, at bigint NOT NULL, key text COLLATE "C", record text NOT NULL);
CREATE INDEX sw_audit_by_key ON sw_audit (key, id) WHERE key IS NOT NULL;
CREATE SEQUENCE sw_audit_id;

CREATE TRIGGER sw_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON sw_blocks FOR EACH STATEMENT EXECUTE FUNCTION sw_fence();
CREATE TRIGGER sw_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON sw_offenders FOR EACH STATEMENT EXECUTE FUNCTION sw_fence();
CREATE TRIGGER sw_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON sw_allow FOR EACH STATEMENT EXECUTE FUNCTION sw_fence();
CREATE TRIGGER sw_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON sw_owned FOR EACH STATEMENT EXECUTE FUNCTION sw_fence();
CREATE TRIGGER sw_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON sw_audit FOR EACH STATEMENT EXECUTE FUNCTION sw_fence();

-- Every controller, leader or follower, says here who it is and when it was last seen.
CREATE TABLE sw_members (
    name text PRIMARY KEY,
    role text NOT NULL,
    epoch bigint NOT NULL,
    api text NOT NULL,
    seen bigint NOT NULL
);

-- Operator actions taken on a follower, carried out by the leader and answered here.
CREATE TABLE sw_requests (
    id bigserial PRIMARY KEY,
    op text NOT NULL,
    actor text NOT NULL,
    asked_by text NOT NULL,
    asked_at bigint NOT NULL,
    answer text,
    answered_by text,
    answered_at bigint
);
CREATE INDEX sw_requests_open ON sw_requests (id) WHERE answer IS NULL;
"#];

/// What `migrate` found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub from: i32,
    pub to: i32,
}

/// Brings the schema to [`VERSION`]; refuses a database written by a newer version.
pub fn migrate(c: &mut postgres::Client) -> Result<Migrated, super::PgError> {
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])?;
    // Created only when missing: a user that may not create tables can still open a database
    // already at this version (and is told which privileges it lacks).
    let exists: bool = tx.query_one("SELECT to_regclass('sw_schema') IS NOT NULL", &[])?.get(0);
    if !exists {
        tx.batch_execute("CREATE TABLE sw_schema (version int NOT NULL)")?;
    }
    let from: i32 = match tx.query_opt("SELECT version FROM sw_schema", &[])? {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO sw_schema VALUES (0)", &[])?;
            0
        }
    };
    if from > VERSION {
        return Err(super::PgError::Schema(format!(
            "the database is at schema version {from}, written by a newer stickwarden (this one knows {VERSION}); \
             nothing was changed"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        tx.batch_execute(sql)?;
        tx.execute("UPDATE sw_schema SET version = $1", &[&(i as i32 + 1)])?;
    }
    tx.commit()?;
    Ok(Migrated { from, to: VERSION })
}
