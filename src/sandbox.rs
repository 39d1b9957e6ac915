//! A throw-away HAProxy for the demo and the tests, and a tiny HTTP client to drive it.
//!
//! [`Sandbox::start`] writes a configuration into a fresh temp dir (Unix sockets at levels admin,
//! operator and user, listeners on free loopback ports), runs `haproxy -db` in the foreground as a
//! child, waits until its admin socket answers, and kills it when dropped. [`http_get`] sends one
//! request from a chosen loopback source address (127.0.0.2, 127.0.0.3, ...), so that one
//! machine can play many clients. Nothing here ever talks to a non-loopback address.

use std::io::{self, BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What the standard sandbox configuration contains beyond its fixed tables.
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// HAProxy's idle timeout of Runtime API connections, `stats timeout` (default 2 minutes).
    pub stats_timeout_secs: Option<u32>,
    /// Run HAProxy in master-worker mode (`-W -S DIR/master.sock`), to reload it.
    pub master_worker: bool,
    /// The block ACL file (default `DIR/block.lst`); nodes of a test fleet share one, as nodes
    /// deployed from one configuration do.
    pub acl_file: Option<PathBuf>,
    /// Suspects mode ([`crate::suspects::lines`]): `ft_web` tracks its clients at connection time
    /// and carries these lines, and their suspects table is added.
    pub suspects: Option<crate::suspects::Lines>,
    /// Also answer 404 to `GET /missing...`, from a server behind `ft_web` (a frontend of the
    /// sandbox): an error HAProxy counts as a response, as from a real application.
    pub not_found: bool,
    /// Lines for `ft_web` after its tracking line (the `map:CLASS` responses of
    /// [`crate::haproxy_side`]'s kind, a second tracking line and its denies), with [`MAP_FILE`]
    /// standing for the sandbox's block map.
    pub map_lines: Vec<String>,
    /// More sections at the end of the configuration (a backend holding another table).
    pub sections: String,
}

/// What stands for the sandbox's block map file in [`SandboxOptions::map_lines`].
pub const MAP_FILE: &str = "@MAP_FILE@";

/// A running HAProxy on loopback; killed on drop.
pub struct Sandbox {
    dir: tempfile::TempDir,
    child: Child,
    bin: PathBuf,
    master_worker: bool,
    acl_file: PathBuf,
    /// Listening port of the `ft_web` HTTP frontend.
    pub web_port: u16,
    /// Listening port of the `ft_tcp` frontend, which holds TCP connections open (live streams).
    pub tcp_port: u16,
    pub version: String,
}

impl Sandbox {
    /// Starts HAProxy on the standard configuration ([`standard_config`]).
    pub fn start(opts: &SandboxOptions) -> io::Result<Sandbox> {
        let dir = tempfile::Builder::new().prefix("stickwarden-haproxy-").tempdir()?;
        let (web_port, tcp_port) = (free_port()?, free_port()?);
        let acl_file = opts.acl_file.clone().unwrap_or_else(|| dir.path().join("block.lst"));
        if !acl_file.exists() {
            std::fs::write(&acl_file, "")?;
        }
        std::fs::write(dir.path().join("block.map"), "")?;
        let cfg = standard_config(dir.path(), web_port, tcp_port, opts);
        let mut sb = Self::launch(dir, &cfg, web_port, tcp_port, opts.master_worker)?;
        sb.acl_file = acl_file;
        Ok(sb)
    }

    /// Starts HAProxy on `cfg` in `dir`; `cfg` must declare `DIR/admin.sock` at level admin.
    pub fn start_with(dir: tempfile::TempDir, cfg: &str, web_port: u16, tcp_port: u16) -> io::Result<Sandbox> {
        Self::launch(dir, cfg, web_port, tcp_port, false)
    }

    fn launch(
        dir: tempfile::TempDir,
        cfg: &str,
        web_port: u16,
        tcp_port: u16,
        master_worker: bool,
    ) -> io::Result<Sandbox> {
        let bin = haproxy_binary().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, missing_haproxy_message()))?;
        std::fs::write(dir.path().join("haproxy.cfg"), cfg)?;
        let version = haproxy_version(&bin)?;
        let child = spawn(&bin, dir.path(), master_worker)?;
        let acl_file = dir.path().join("block.lst");
        Ok(Sandbox { dir, child, bin, master_worker, acl_file, web_port, tcp_port, version })
    }

    /// Stops HAProxy (SIGKILL) and starts it again on the same configuration and socket paths:
    /// what a restart does to runtime state, every table entry and ACL entry gone.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let _ = std::fs::remove_file(self.dir.path().join("admin.sock"));
        self.child = spawn(&self.bin, self.dir.path(), self.master_worker)?;
        Ok(())
    }

    /// Reloads a master-worker HAProxy through its master socket (`reload`): a new worker with a
    /// new pid and empty runtime state takes over the sockets. Returns once the new worker answers
    /// on the admin socket with a pid other than `old_pid`.
    pub fn reload(&self, old_pid: u64) -> io::Result<()> {
        use std::io::Write;
        if !self.master_worker {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "not started in master-worker mode"));
        }
        let mut m = std::os::unix::net::UnixStream::connect(self.dir.path().join("master.sock"))?;
        m.write_all(b"reload\n")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(mut s) = std::os::unix::net::UnixStream::connect(self.dir.path().join("admin.sock")) {
                let _ = s.write_all(b"show info\n");
                let mut text = String::new();
                let _ = s.read_to_string(&mut text);
                let pid = text.lines().find_map(|l| l.strip_prefix("Pid: ")).and_then(|p| p.trim().parse::<u64>().ok());
                if pid.is_some_and(|p| p != old_pid) {
                    return Ok(());
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, "no new worker within 10 s"))
    }

    /// Kills HAProxy now (a crash or an outage, seen from the Runtime API).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The socket at `level admin`, as a target address.
    pub fn admin(&self) -> String {
        format!("unix:{}", self.dir.path().join("admin.sock").display())
    }

    /// The socket at `level operator`.
    pub fn operator(&self) -> String {
        format!("unix:{}", self.dir.path().join("oper.sock").display())
    }

    /// The socket at `level user`.
    pub fn user(&self) -> String {
        format!("unix:{}", self.dir.path().join("user.sock").display())
    }

    /// The ACL file the standard configuration denies on.
    /// The block map file the `map:CLASS` lines read (empty at start).
    pub fn block_map(&self) -> PathBuf {
        self.dir.path().join("block.map")
    }

    pub fn block_acl(&self) -> PathBuf {
        self.acl_file.clone()
    }

    /// HAProxy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `haproxy -db -f DIR/haproxy.cfg` (with `-W -S DIR/master.sock` in master-worker mode) and
/// waits until `DIR/admin.sock` accepts connections.
fn spawn(bin: &Path, dir: &Path, master_worker: bool) -> io::Result<Child> {
    let mut cmd = Command::new(bin);
    if master_worker {
        cmd.arg("-W").arg("-S").arg(dir.join("master.sock"));
    }
    let mut child = cmd
        .arg("-db")
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let socket = dir.join("admin.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(io::Error::other(format!("haproxy exited ({status}): {}", err.trim())));
        }
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(io::ErrorKind::TimedOut, "haproxy did not open its socket within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Drain HAProxy's stderr in the background so that its warnings never block it.
    if let Some(e) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                tracing::debug!(target: "haproxy", "{line}");
            }
        });
    }
    Ok(child)
}

/// The standard sandbox configuration: `ft_web` (HTTP, an `ip` table, deny on `gpt0 > 0` and on the
/// `block.lst` ACL), `ft_tcp` (TCP connections proxied to `ft_web`, to have live streams; tracked
/// in `ft_web`'s table, so a held connection keeps its client's entry in use), and one table of
/// every key type, as in the captured fixtures.
pub fn standard_config(dir: &Path, web_port: u16, tcp_port: u16, opts: &SandboxOptions) -> String {
    let d = dir.display();
    let stats_timeout = opts.stats_timeout_secs.unwrap_or(120);
    let acl = opts.acl_file.clone().unwrap_or_else(|| dir.join("block.lst"));
    let acl = acl.display();
    let (track, suspects, section) = match &opts.suspects {
        Some(l) => (
            "tcp-request connection track-sc0 src",
            l.frontend.iter().map(|line| format!("    {line}\n")).collect::<String>(),
            l.section.iter().map(|line| format!("{line}\n")).collect::<String>(),
        ),
        None => ("http-request track-sc0 src", String::new(), String::new()),
    };
    let map = dir.join("block.map");
    let map_lines: String = opts
        .map_lines
        .iter()
        .map(|l| format!("    {}\n", l.trim_start().replace(MAP_FILE, &map.display().to_string())))
        .collect();
    let (not_found, only_found, origin) = if opts.not_found {
        let port = free_port().unwrap_or(1);
        (
            "    use_backend be_origin if { path_beg /missing }\n",
            " if !{ path_beg /missing }",
            format!(
                "frontend fe_origin\n    mode http\n    bind 127.0.0.1:{port}\n    http-request return status 404\n\
                 backend be_origin\n    mode http\n    server o1 127.0.0.1:{port}\n"
            ),
        )
    } else {
        ("", "", String::new())
    };
    format!(
        "global
    stats socket {d}/admin.sock mode 600 level admin
    stats socket {d}/oper.sock mode 600 level operator
    stats socket {d}/user.sock mode 600 level user
    stats timeout {stats_timeout}s
    stats maxconn 50
defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend ft_web
    mode http
    bind 127.0.0.1:{web_port}
    stick-table type ip size 1m expire 15m store gpt0,http_req_rate(10s),http_err_rate(10s),conn_cur,conn_rate(10s)
    {track}
{suspects}{map_lines}    http-request deny deny_status 403 if {{ sc0_get_gpt0 gt 0 }}
    http-request deny deny_status 403 if {{ src -f {acl} }}
    http-request return status 200 content-type text/plain string ok{only_found}
{not_found}
frontend ft_tcp
    mode tcp
    bind 127.0.0.1:{tcp_port}
    tcp-request connection track-sc0 src table ft_web
    default_backend be_hold
backend be_hold
    mode tcp
    server s1 127.0.0.1:{web_port}
backend t_v6
    stick-table type ipv6 size 1k expire 1h store gpt0,gpc0,http_err_rate(10s)
backend t_str
    stick-table type string len 32 size 1k expire 1h store gpc0,conn_cnt
backend t_int
    stick-table type integer size 1k expire 1h store gpc0
backend t_bin
    stick-table type binary len 8 size 1k expire 1h store gpc0
backend t_arr
    stick-table type ip size 1k expire 1h store gpc(3),gpt(2),gpc_rate(3,10s),http_req_cnt,bytes_in_rate(1m)
backend t_noexp
    stick-table type ip size 1k store gpt0
backend t_small
    stick-table type ip size 2 expire 1h store gpt0
{section}{origin}{extra}",
        extra = opts.sections
    )
}

/// `$HAPROXY`, else `haproxy` on `PATH` or in the sbin directories Debian installs it to.
pub fn haproxy_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HAPROXY") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
}

/// What to tell a user who has no `haproxy`.
pub fn missing_haproxy_message() -> String {
    "haproxy is not installed; install it with: sudo apt-get update && sudo apt-get install -y haproxy \
     (or set HAPROXY=/path/to/haproxy)"
        .to_owned()
}

fn haproxy_version(bin: &Path) -> io::Result<String> {
    let out = Command::new(bin).arg("-v").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split_whitespace().skip_while(|w| *w != "version").nth(1).unwrap_or("unknown").to_owned())
}

/// A loopback TCP port nothing listens on (yet).
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The loopback address playing client number `n` (1 -> 127.0.0.2, 2 -> 127.0.0.3, ...).
pub fn client_addr(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n.saturating_add(1)))
}

/// Opens a TCP connection to `127.0.0.1:port` from the loopback source address `src`.
pub async fn connect_from(src: IpAddr, port: u16) -> io::Result<TcpStream> {
    if !src.is_loopback() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "sandbox traffic only comes from loopback"));
    }
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    tokio::time::timeout(Duration::from_secs(5), sock.connect(SocketAddr::from(([127, 0, 0, 1], port))))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// One `GET /` from `src` to the sandbox's HTTP port; returns the status code.
pub async fn http_get(src: IpAddr, port: u16) -> io::Result<u16> {
    let mut s = connect_from(src, port).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n").await?;
    let mut buf = Vec::with_capacity(256);
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no HTTP answer within 5 s"))??;
    parse_status(&buf)
}

/// `HTTP/1.1 403 Forbidden` -> 403.
fn parse_status(resp: &[u8]) -> io::Result<u16> {
    let line = resp.split(|&b| b == b'\n').next().unwrap_or_default();
    std::str::from_utf8(line).ok().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).ok_or_else(
        || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an HTTP answer: {:?}", String::from_utf8_lossy(line)),
            )
        },
    )
}

/// Sends `count` requests from `src`, `concurrency` at a time; returns how many got each status.
pub async fn http_burst(src: IpAddr, port: u16, count: usize, concurrency: usize) -> io::Result<Vec<(u16, usize)>> {
    let mut statuses: Vec<(u16, usize)> = Vec::new();
    let mut left = count;
    while left > 0 {
        let n = left.min(concurrency.max(1));
        left -= n;
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            set.spawn(http_get(src, port));
        }
        while let Some(res) = set.join_next().await {
            let status = res.map_err(io::Error::other)??;
            match statuses.iter_mut().find(|(s, _)| *s == status) {
                Some((_, c)) => *c += 1,
                None => statuses.push((status, 1)),
            }
        }
    }
    statuses.sort_unstable();
    Ok(statuses)
}

/// One blocking HTTP/1.1 exchange with 127.0.0.1:`port`: the status, the head and the body (read
/// by the answer's own framing: Content-Length or chunked). For the console's tests and bench,
/// and the WebDriver calls of the browser tests.
pub fn http_exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, String, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    // Read by the answer's own framing: chromedriver keeps the connection open after it.
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed before the answer's head"));
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let lower = head.to_ascii_lowercase();
    let length =
        lower.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = lower.contains("transfer-encoding: chunked");
    loop {
        let have = raw.len() - head_end;
        let done = match length {
            Some(n) => have >= n,
            // The last chunk: `0` and an empty trailer, after the data's own CRLF or alone.
            None if chunked => raw[head_end..].ends_with(b"\r\n0\r\n\r\n") || raw[head_end..] == *b"0\r\n\r\n",
            None => false,
        };
        if done {
            break;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let rest = String::from_utf8_lossy(&raw[head_end..]).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = if chunked { dechunk(&rest) } else { rest };
    Ok((status, head.trim_end().to_owned(), body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The address of the `i`-th generated entry: 10.0.0.0 plus `i`.
pub fn nth_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i))
}

/// Fills `table` (an `ip` table storing `gpt0`) with `n` entries, [`nth_addr`]`(0..n)`, every
/// `flag_every`-th with `gpt0 = 1` (none when 0), through pipelined `set table` (for the benches'
/// million-entry tables: about five seconds).
pub async fn fill_table(
    client: &crate::Client,
    table: &str,
    n: u32,
    flag_every: u32,
) -> Result<(), crate::ClientError> {
    use crate::proto::{Command as Cmd, TableKey};
    let gpt0: crate::proto::DataField = "gpt0".parse().expect("a column name");
    let cmds: Vec<Cmd> = (0..n)
        .map(|i| Cmd::SetTable {
            table: table.to_owned(),
            key: TableKey::Ip(nth_addr(i)),
            fields: vec![(gpt0.clone(), u64::from(flag_every > 0 && i % flag_every == 0))],
        })
        .collect();
    for chunk in cmds.chunks(8192) {
        if let Some(e) = client.pipeline(chunk).await.into_iter().find_map(Result::err) {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 403 Forbidden\r\n\r\n").unwrap(), 403);
        assert!(parse_status(b"garbage").is_err());
        assert_eq!(client_addr(1), "127.0.0.2".parse::<IpAddr>().unwrap());
    }
}
