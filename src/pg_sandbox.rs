//! A throw-away PostgreSQL for the tests and benches of the shared store: `initdb` and `postgres`
//! (Debian's, from `/usr/lib/postgresql/*/bin`, or `$PG_BIN`) in a temp dir, listening on a
//! loopback port and a socket in that dir, run as an unprivileged user when the caller is root
//! (PostgreSQL refuses to run as root: the `postgres` account when there is one, else `nobody`).
//! It is stopped with an immediate shutdown (SIGQUIT) and killed when dropped; [`PgSandbox::stop`]
//! and [`PgSandbox::start_again`] play an outage of the database.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser the sandbox's cluster is made with (trust authentication on loopback).
pub const USER: &str = "stickwarden";

/// A running PostgreSQL on loopback.
pub struct PgSandbox {
    dir: tempfile::TempDir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    pub port: u16,
    child: Option<Child>,
    durable: bool,
}

fn err(m: impl Into<String>) -> io::Error {
    io::Error::other(m.into())
}

/// The directory of PostgreSQL's server programs: `$PG_BIN`, else the newest of
/// `/usr/lib/postgresql/*/bin`.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(b));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// The uid and gid to run as when this process is root (`None` otherwise).
fn unprivileged() -> io::Result<Option<(u32, u32)>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
    if uid != Some("0") {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    for name in ["postgres", "nobody"] {
        for l in passwd.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() > 3 && f[0] == name {
                if let (Ok(u), Ok(g)) = (f[2].parse(), f[3].parse()) {
                    return Ok(Some((u, g)));
                }
            }
        }
    }
    Err(err("running as root, and neither a postgres nor a nobody account to run PostgreSQL as"))
}

/// Runs `f` on a thread of its own: the blocking client starts a runtime, which it may not do on
/// a thread of the caller's (a `#[tokio::test]`).
fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| s.spawn(f).join().expect("a PostgreSQL client thread"))
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PgSandbox {
    /// A new cluster, started and answering. `durable: false` turns fsync off (tests); benches
    /// measure with it on, as production runs.
    pub fn start(durable: bool) -> io::Result<PgSandbox> {
        let bin = bin_dir().ok_or_else(|| {
            err("PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/initdb): `make test-deps` installs it")
        })?;
        let owner = unprivileged()?;
        let dir = tempfile::Builder::new().prefix("stickwarden-pg").tempdir()?;
        if let Some((u, g)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(u), Some(g))?;
        }
        let mut sb = PgSandbox { dir, bin, owner, port: free_port()?, child: None, durable };
        let out = sb
            .command("initdb")
            .args(["-D", "data", "-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .output()?;
        if !out.status.success() {
            return Err(err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr))));
        }
        sb.start_again()?;
        Ok(sb)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.current_dir(self.dir.path()).env_remove("PGDATA");
        if let Some((u, g)) = self.owner {
            c.uid(u).gid(g);
        }
        c
    }

    /// The temp dir (data, socket and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server again on the same data and port (after [`PgSandbox::stop`]); returns
    /// once it answers.
    pub fn start_again(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("postgres.log"))?;
        if let Some((u, g)) = self.owner {
            std::os::unix::fs::chown(self.dir.path().join("postgres.log"), Some(u), Some(g))?;
        }
        let fsync = if self.durable { "on" } else { "off" };
        let child = self
            .command("postgres")
            .args(["-D", "data", "-p", &self.port.to_string(), "-k", "."])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", &format!("fsync={fsync}")])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = self.port;
        loop {
            let connected = off_runtime(|| {
                postgres::Config::new()
                    .host("127.0.0.1")
                    .port(port)
                    .user(USER)
                    .dbname("postgres")
                    .connect_timeout(Duration::from_secs(1))
                    .connect(postgres::NoTls)
                    .map(drop)
            });
            match connected {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    let log = std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
                    return Err(err(format!("PostgreSQL did not answer within 30 s: {e}\n{log}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Stops the server at once (an immediate shutdown, as a crash would), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-QUIT", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A new, empty database named `name`; its URL.
    pub fn database(&self, name: &str) -> io::Result<String> {
        self.sql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url(name))
    }

    /// Runs `sql` (one or more statements) on database `db` as the superuser.
    pub fn sql(&self, db: &str, sql: &str) -> io::Result<()> {
        let port = self.port;
        off_runtime(|| {
            let mut c = postgres::Config::new()
                .host("127.0.0.1")
                .port(port)
                .user(USER)
                .dbname(db)
                .connect(postgres::NoTls)
                .map_err(|e| err(e.to_string()))?;
            c.batch_execute(sql).map_err(|e| err(stickwarden_describe(&e)))
        })
    }

    /// The URL of database `name` (no password: the sandbox trusts loopback).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }
}

fn stickwarden_describe(e: &postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

impl Drop for PgSandbox {
    fn drop(&mut self) {
        self.stop();
    }
}
