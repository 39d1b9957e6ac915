//! The PostgreSQL backend on a real PostgreSQL (run by `stickwarden::pg_sandbox` in a temp dir):
//! the same records and answers as sled, the fence that refuses a write of an old epoch, schema
//! migrations, privileges, and backups moving sled -> PostgreSQL -> sled unchanged.

use std::sync::Arc;

use stickwarden::config::PgConfig;
use stickwarden::key::Key;
use stickwarden::pg_sandbox::PgSandbox;
use stickwarden::rules::{Action, Actions};
use stickwarden::store::postgres::{lead, PgStore};
use stickwarden::store::{AllowEntry, AuditRecord, Block, Event, Offence, Offender, Origin, Store, StoreError};

fn pg() -> PgSandbox {
    PgSandbox::start(false).unwrap_or_else(|e| panic!("cannot start PostgreSQL for the test: {e}"))
}

fn cfg(url: String, name: &str) -> PgConfig {
    PgConfig { url, password_file: None, name: name.into() }
}

fn block(key: &str, since: u64) -> Block {
    Block {
        key: Key::Net(stickwarden::net::parse_net(key).unwrap()),
        level: 1,
        actions: Actions::new(vec![Action::Tag]),
        rule: "flood".into(),
        reason: "test".into(),
        source: Origin::Auto,
        actor: "stickwarden".into(),
        since,
        until: since + 60_000,
        counters: vec![("http_req_rate".into(), 120)],
        dry_run: false,
        place: None,
        nodes: Vec::new(),
    }
}

/// An operator's allowlist entry for 192.0.2.0/24.
fn allow_entry() -> AllowEntry {
    AllowEntry { net: "192.0.2.0/24".parse().unwrap(), reason: "r".into(), actor: "a".into(), since: 1, until: None }
}

/// A store on a new database of `sb`, leading at a new epoch.
async fn leading(sb: &PgSandbox, db: &str) -> (Arc<PgStore>, Store, lead::Session) {
    let c = cfg(sb.database(db).unwrap(), "ctl-a");
    let dir = tempfile::tempdir().unwrap();
    let pg = Arc::new(tokio::task::block_in_place(|| PgStore::connect(&c, dir.path())).unwrap());
    let s = lead::Session::open(&c).await.unwrap();
    let took = s.try_lead().await.unwrap().expect("nobody else leads");
    pg.set_epoch(took.epoch);
    (pg.clone(), Store::on_postgres(pg), s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_read_back_as_on_sled_and_a_write_of_an_old_epoch_is_refused_by_the_database() {
    let sb = pg();
    let (pg, s, session) = leading(&sb, "records").await;
    tokio::task::block_in_place(|| {
        let addr: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        let b = block("10.0.0.7", 1_000);
        let mut o = Offender::default();
        o.offences.push(Offence { at: 1_000, rule: "flood".into(), level: 1, dry_run: false });
        let id = s.decide(&b, Some((&Key::host(addr), &o)), AuditRecord::of(Event::Block, &b, 1_000)).unwrap();
        let all = [block("10.0.0.0/24", 2_000), block("10.0.1.7", 3_000)];
        s.decide_many(&all, |b| AuditRecord::of(Event::Block, b, b.since)).unwrap();
        assert_eq!(s.block(&b.key).unwrap().unwrap(), b);
        assert_eq!(s.offender(&Key::host(addr)).unwrap().unwrap().offences.len(), 1);
        assert_eq!(s.offenders(&[Key::host(addr), all[1].key.clone()]).unwrap()[1], None);
        assert_eq!(s.block_covering(addr).unwrap().unwrap().key, b.key, "the address's own block first");
        // An older block of the same key is not released; the current one is.
        assert!(!s.release(&b.key, 999, AuditRecord::of(Event::Release, &b, 5_000)).unwrap());
        assert!(s.release(&b.key, 1_000, AuditRecord::of(Event::Release, &b, 5_000)).unwrap());
        assert_eq!(s.block_covering(addr).unwrap().unwrap().key, all[0].key, "then the network's");
        let about: Vec<(Event, u64)> = s.audit_covering(addr).unwrap().iter().map(|r| (r.event, r.at)).collect();
        assert_eq!(about, [(Event::Block, 1_000), (Event::Block, 2_000), (Event::Release, 5_000)]);
        assert!(s.owns(&b.key).unwrap());
        let log = s.audit_since(0).unwrap();
        assert_eq!(log.first().unwrap().id, id);
        assert!(log.windows(2).all(|w| w[0].id < w[1].id), "ids grow");
        let mut back = Vec::new();
        s.audit_back(None, &mut |r| {
            back.push(r.at);
            true
        })
        .unwrap();
        assert_eq!(back, [5_000, 3_000, 2_000, 1_000]);
        // Pages in key order, as sled gives them.
        let page = s.blocks_after(None, 1).unwrap();
        let rest = s.blocks_after(Some(&page[0].key), 10).unwrap();
        assert_eq!(page.len() + rest.len(), 2);
        s.put_allow(&allow_entry()).unwrap();
        assert_eq!(s.allows().unwrap().len(), 1);
        assert!(s.remove_allow(&"192.0.2.0/24".parse().unwrap()).unwrap().is_some());
        assert!(s.verify().unwrap().problems.is_empty());
        assert_eq!(s.prune(1_001, 2_500).unwrap(), (1, 2));
    });

    // Another controller takes the lead (this one's session is gone): this one's writes are
    // refused by the database itself, even with the check in the client bypassed.
    drop(session);
    let other = lead::Session::open(&cfg(sb.url("records"), "ctl-b")).await.unwrap();
    let took = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if let Some(t) = other.try_lead().await.unwrap() {
                break t;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the lock is free once the first session is gone");
    assert_eq!((took.previous.holder.as_str(), took.epoch), ("ctl-a", took.previous.epoch + 1));
    tokio::task::block_in_place(|| {
        let before = s.audit_since(0).unwrap().len();
        let e = s.audit(AuditRecord::note(Event::Allow, 9_000, "late", "x".into())).unwrap_err();
        assert!(matches!(e, StoreError::Fenced(_)), "{e}");
        assert!(e.to_string().contains("refused: the leader is at epoch"), "{e}");
        let b = block("10.9.9.9", 9_000);
        let e = s.decide(&b, None, AuditRecord::of(Event::Block, &b, 9_000)).unwrap_err();
        assert!(matches!(e, StoreError::Fenced(_)), "{e}");
        assert_eq!(s.audit_since(0).unwrap().len(), before, "nothing of the old epoch was written");
        assert!(s.block(&b.key).unwrap().is_none());
        // Not leading at all: refused before anything is sent.
        pg.set_epoch(0);
        let e = s.audit(AuditRecord::note(Event::Allow, 9_000, "late", "x".into())).unwrap_err();
        assert!(e.to_string().contains("does not lead"), "{e}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_goes_from_sled_to_postgres_and_back_unchanged() {
    let sb = pg();
    let dir = tempfile::tempdir().unwrap();
    let sled = Store::open(&dir.path().join("sled"), 1 << 20).unwrap();
    let mut o = Offender::default();
    o.offences.push(Offence { at: 1_000, rule: "flood".into(), level: 1, dry_run: false });
    let b = block("10.0.0.7", 1_000);
    sled.decide(&b, Some((&b.key, &o)), AuditRecord::of(Event::Block, &b, 1_000)).unwrap();
    let api = Key::named("st_apikey", "k 1;\\x");
    let t = Block { key: api.clone(), ..block("10.0.0.8", 2_000) };
    sled.decide(&t, None, AuditRecord::of(Event::Block, &t, 2_000)).unwrap();
    sled.put_allow(&allow_entry()).unwrap();
    let (bytes, counts) = sled.export(Vec::new()).unwrap();
    let file = dir.path().join("backup.jsonl");
    std::fs::write(&file, &bytes).unwrap();

    let c = cfg(sb.database("restored").unwrap(), "ctl-a");
    let restored = tokio::task::block_in_place(|| PgStore::restore(&file, &c, dir.path())).unwrap();
    assert_eq!(restored, counts);
    let pg = Arc::new(tokio::task::block_in_place(|| PgStore::connect(&c, dir.path())).unwrap());
    let s = Store::on_postgres(pg.clone());
    tokio::task::block_in_place(|| {
        assert_eq!(s.blocks().unwrap(), sled.blocks().unwrap());
        assert_eq!(s.block(&api).unwrap().unwrap().key, api);
        assert_eq!(s.offender(&b.key).unwrap().unwrap().offences.len(), 1);
        let mut log = s.audit_since(0).unwrap();
        assert_eq!(log.pop().map(|r| r.event), Some(Event::Restored));
        assert_eq!(log, sled.audit_since(0).unwrap());
        // Restoring over a store that holds records is refused and changes nothing.
        let e = PgStore::restore(&file, &c, dir.path()).unwrap_err().to_string();
        assert!(e.contains("already holds a store") && e.contains("nothing was restored"), "{e}");
        // A damaged backup is refused before anything is written.
        let cut = dir.path().join("cut.jsonl");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let c2 = cfg(sb.database("cut").unwrap(), "ctl-a");
        let e = PgStore::restore(&cut, &c2, dir.path()).unwrap_err().to_string();
        assert!(e.contains("nothing was restored"), "{e}");
    });
    // A controller leading the database refuses a restore into it.
    let session = lead::Session::open(&c).await.unwrap();
    let took = session.try_lead().await.unwrap().unwrap();
    let c3 = cfg(sb.url("cut"), "ctl-a");
    let e = tokio::task::block_in_place(|| PgStore::restore(&file, &c3, dir.path()));
    assert!(e.is_ok(), "another database is not held: {e:?}");
    pg.set_epoch(took.epoch);
    tokio::task::block_in_place(|| {
        let next = s.audit(AuditRecord::note(Event::Allow, 3_000, "t", "x".into())).unwrap();
        assert!(next > sled.newest().unwrap().unwrap().id, "ids go on after a restore");
        // And back to sled: the same records.
        let (back, _) = s.export(Vec::new()).unwrap();
        let file2 = dir.path().join("back.jsonl");
        std::fs::write(&file2, &back).unwrap();
        Store::restore(&file2, &dir.path().join("sled2"), 1 << 20).unwrap();
        let again = Store::open(&dir.path().join("sled2"), 1 << 20).unwrap();
        assert_eq!(again.blocks().unwrap(), sled.blocks().unwrap());
        assert_eq!(again.allows().unwrap(), sled.allows().unwrap());
        let e = PgStore::restore(&file2, &c, dir.path()).unwrap_err().to_string();
        assert!(e.contains("a controller leads"), "{e}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_migrated_once_and_a_newer_one_or_a_user_without_privileges_is_refused() {
    let sb = pg();
    let url = sb.database("schema").unwrap();
    let dir = tempfile::tempdir().unwrap();
    tokio::task::block_in_place(|| {
        // Two controllers starting at once: one migrates, both open.
        let c = cfg(url.clone(), "a");
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| PgStore::connect(&c, dir.path()).map(|p| p.schema_version().unwrap()));
            let b = s.spawn(|| PgStore::connect(&c, dir.path()).map(|p| p.schema_version().unwrap()));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!((a.unwrap(), b.unwrap()), (1, 1));
        sb.sql("schema", "UPDATE sw_schema SET version = 99").unwrap();
        let e = PgStore::connect(&c, dir.path()).unwrap_err().to_string();
        assert!(e.contains("schema version 99") && e.contains("newer stickwarden"), "{e}");
        sb.sql("schema", "UPDATE sw_schema SET version = 1").unwrap();
        sb.sql(
            "schema",
            "CREATE ROLE reader LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader; \
             GRANT USAGE ON SCHEMA public TO reader",
        )
        .unwrap();
        let reader = cfg(url.replace("stickwarden@", "reader@"), "r");
        let e = PgStore::connect(&reader, dir.path()).unwrap_err().to_string();
        assert!(e.contains("lacks privileges") && e.contains("sw_blocks: INSERT"), "{e}");
        // An unreachable database says so, with no password in the message.
        let down = cfg("postgres://stickwarden@127.0.0.1:1/x".into(), "d");
        let e = PgStore::connect(&down, dir.path()).unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:1") && e.contains("unreachable"), "{e}");
    });
}

/// The controller's writes, in runs that the PostgreSQL backend writes in bulk (decisions,
/// offender updates, a key twice in a row, a release in between), leave the same records as
/// sled's one-by-one transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_mixed_writes_leaves_the_same_records_as_on_sled() {
    use stickwarden::store::Write;
    let sb = pg();
    let (_pg, s, _session) = leading(&sb, "batch").await;
    let dir = tempfile::tempdir().unwrap();
    let sled = Store::open(&dir.path().join("sled"), 1 << 20).unwrap();
    let offender = |n: u64| {
        let mut o = Offender::default();
        o.offences.push(Offence { at: n, rule: "flood".into(), level: 1, dry_run: false });
        o
    };
    let decide = |key: &str, since: u64| {
        let b = block(key, since);
        let rec = AuditRecord::of(Event::Block, &b, since);
        Write::Decide { offender: Some((b.key.clone(), offender(since))), block: Box::new(b), rec }
    };
    let k = |a: &str| Key::Net(stickwarden::net::parse_net(a).unwrap());
    let mut writes = vec![
        decide("10.0.0.1", 1_000),
        decide("10.0.0.2", 1_000),
        Write::Offender(k("10.0.0.3"), offender(1_100)),
        Write::Offender(k("10.0.0.3"), offender(1_200)),
        decide("10.0.0.1", 2_000),
        Write::Release {
            key: k("10.0.0.2"),
            since: 1_000,
            rec: AuditRecord::of(Event::Release, &block("10.0.0.2", 1_000), 3_000),
        },
        Write::Audit(AuditRecord::note(Event::BreakerOpen, 3_500, "stickwarden", "x".into())),
    ];
    writes.extend((0..50).map(|i| decide(&format!("10.1.0.{i}"), 4_000)));
    tokio::task::block_in_place(|| {
        s.record(writes.clone()).unwrap();
        sled.record(writes).unwrap();
        assert_eq!(s.blocks().unwrap(), sled.blocks().unwrap());
        for key in ["10.0.0.1", "10.0.0.3", "10.1.0.7"] {
            assert_eq!(s.offender(&k(key)).unwrap(), sled.offender(&k(key)).unwrap(), "{key}");
        }
        let strip = |v: Vec<AuditRecord>| v.into_iter().map(|r| (r.event, r.key, r.at)).collect::<Vec<_>>();
        assert_eq!(strip(s.audit_since(0).unwrap()), strip(sled.audit_since(0).unwrap()));
        assert_eq!(s.block(&k("10.0.0.1")).unwrap().unwrap().since, 2_000, "the later decision stands");
        assert!(s.owns(&k("10.0.0.2")).unwrap() && s.owns(&k("10.1.0.49")).unwrap());
    });
}
