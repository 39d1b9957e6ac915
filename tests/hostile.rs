//! The HTTP API and the CLI against hostile clients and careless set-ups, with the real
//! `stickwarden run` process and a real HAProxy: idle-connection floods and a slowloris client
//! under a low file descriptor limit, an impostor on the API's port, body limits, a tokens file
//! others may read, and a regular file where the API socket should go.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Adds a TCP listener on a free loopback port to the setup's `[api]` (after its Unix socket).
fn with_tcp_api(s: &Setup) -> u16 {
    let port = stickwarden::sandbox::free_port().unwrap();
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    let cfg = cfg.replace("\"]\ntokens = ", &format!("\", \"127.0.0.1:{port}\"]\ntokens = "));
    std::fs::write(&s.config, cfg).unwrap();
    port
}

/// One `GET path` with `Connection: close` from 127.0.0.1; the status line's code, or 0.
async fn http_status(port: u16, path: &str) -> u16 {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(("127.0.0.1", port))).await
    else {
        return 0;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // an error answer (408) before the close
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_floods_and_a_slow_client_leave_the_api_and_the_enforcement_working() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let sock = with_api(&s);
    let port = with_tcp_api(&s);
    let log = s.dir.path().join("daemon.log");
    // 256 file descriptors, as a careless unit file might give.
    let mut d = Command::new("sh")
        .args(["-c", &format!("ulimit -n 256 && exec \"$0\" run --config {}", s.config.display())])
        .arg(env!("CARGO_BIN_EXE_stickwarden"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(api_socket_appears(&sock).await, "the daemon's API never listened");

    // 300 connections that never send a byte, from 127.0.0.9, and a client sending its request
    // head a byte at a time.
    let flooder = stickwarden::sandbox::client_addr(8);
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(stickwarden::sandbox::connect_from(flooder, port).await.unwrap());
    }
    let mut slow = stickwarden::sandbox::connect_from(flooder, port).await.unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        slow
    });

    // With the flood in place, the API answers, an operator can act, and the rules still block.
    for _ in 0..3 {
        assert_eq!(http_status(port, "/healthz").await, 200, "healthz during the flood");
    }
    let o = sw(&s, &["block", "10.40.0.1", "--for", "1h", "--reason", "during the flood"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(acl(&c, &sb).await.contains(&"10.40.0.1".to_owned()));
    flood(&sb, 1, 150).await;
    assert!(
        eventually(Duration::from_secs(5), || async { get(&sb, 1).await == 403 }).await,
        "the abuser was not blocked"
    );

    // The slow client is cut off at the header timeout, long before its head would be complete.
    let mut slow = trickle.await.unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(3)).await, "the slowloris client was never closed");
    let took = started.elapsed();
    assert!(took < stickwarden::api::serve::HEADER_TIMEOUT + Duration::from_secs(3), "closed after {took:?}");
    // The idle ones are closed too (evicted at the cap, or at the header timeout).
    for s in idle.iter_mut().step_by(30) {
        assert!(closed_within(s, Duration::from_secs(3)).await, "an idle connection was kept open");
    }
    assert_eq!(http_status(port, "/healthz").await, 200);
    stop_daemon(d.try_wait().unwrap().map_or(d, |st| panic!("the daemon exited: {st}")));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("Too many open files"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_never_sends_its_token_to_an_impostor() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    with_api(&s);
    // Only a TCP listener: the daemon is down and something else holds its port.
    let port = stickwarden::sandbox::free_port().unwrap();
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    let cfg = cfg.replace(
        &format!("listen = [\"unix:{}\"]", s.dir.path().join("api.sock").display()),
        &format!("listen = [\"127.0.0.1:{port}\"]"),
    );
    std::fs::write(&s.config, cfg).unwrap();
    let impostor = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let log = heard.clone();
    let server = tokio::spawn(async move {
        // Answers anything with 200 and a plausible body, and keeps what it was told.
        while let Ok((mut conn, _)) = impostor.accept().await {
            let mut buf = vec![0u8; 65536];
            let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await.ok().and_then(|r| r.ok());
            log.lock().unwrap().extend_from_slice(&buf[..n.unwrap_or(0)]);
            let body = r#"{"proofs":["00"],"blocked":[],"released":[],"skipped":[],"allowed":[],"failures":[]}"#;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        }
    });
    for args in [
        vec!["block", "10.50.0.1", "--for", "1h", "--reason", "x"],
        vec!["blocks"],
        vec!["block", "10.50.0.1", "--for", "1h", "--reason", "x", "--api", &format!("127.0.0.1:{port}")],
    ] {
        let o = sw(&s, &args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", out(&o));
        assert!(out(&o).contains("could not prove it is the stickwarden daemon"), "{}", out(&o));
    }
    let heard_text = String::from_utf8_lossy(&heard.lock().unwrap()).into_owned();
    assert!(heard_text.contains("/v1/identity?nonce="), "the CLI did not ask for a proof: {heard_text}");
    assert!(!heard_text.contains(OPERATOR_TOKEN), "the token reached the impostor");
    assert!(acl(&c, &sb).await.is_empty());
    server.abort();
    let _ = server.await;

    // The real daemon on the same port proves itself, and the same command goes through.
    let d = spawn_daemon(&s);
    assert!(
        eventually(Duration::from_secs(5), || async { http_status(port, "/healthz").await == 200 }).await,
        "the daemon never listened"
    );
    let o = sw(&s, &["block", "10.50.0.1", "--for", "1h", "--reason", "x"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(acl(&c, &sb).await, ["10.50.0.1"]);
    stop_daemon(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_imports_go_through_the_daemon_and_oversized_bodies_get_413() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    let socket_line = format!("socket = \"{}\"\n", sb.admin());
    let fast = format!("{socket_line}commands_per_second = 1000000\n");
    std::fs::write(&s.config, cfg.replace(&socket_line, &fast)).unwrap();
    let sock = with_api(&s);
    let port = with_tcp_api(&s);
    let d = spawn_daemon(&s);
    assert!(api_socket_appears(&sock).await, "the daemon's API never listened");

    // 200,000 addresses: about 3 MB of JSON, above axum's default 2 MB limit.
    let list = s.dir.path().join("list.txt");
    let text: String =
        (0..200_000u32).map(|i| format!("{}\n", stickwarden::sandbox::nth_addr(i + (20 << 16)))).collect();
    std::fs::write(&list, text).unwrap();
    let o = sw(&s, &["import", list.to_str().unwrap(), "--for", "1h", "--reason", "feed"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(acl(&c, &sb).await.len(), 200_000);

    // Over the limits: 413 too_large, whether the length is declared or the body just keeps coming.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /v1/import HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        80 << 20
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("too_large"), "{answer}");
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /v1/blocks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 32 * 1024, "x".repeat(32 * 1024));
    for _ in 0..4 {
        if conn.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("too_large"), "{answer}");
    assert_eq!(acl(&c, &sb).await.len(), 200_000, "a refused body changed nothing");
    stop_daemon(d);
}

#[test]
fn a_tokens_file_others_can_read_and_a_file_in_the_sockets_place_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let sb = haproxy();
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    let sock = with_api(&s);
    let tokens = s.dir.path().join("tokens.toml");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    for cmd in ["run", "check"] {
        let o = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
            .args([cmd, "--config", s.config.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(64), "{cmd}: {}", out(&o));
        assert!(out(&o).contains(&format!("(mode 0644): run `chmod 600 {}`", tokens.display())), "{}", out(&o));
    }
    private(&tokens);
    // A regular file where the API socket goes is neither replaced nor deleted.
    let path = sock.trim_start_matches("unix:");
    std::fs::write(path, "precious").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["run", "--config", s.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("exists and is not a socket; refusing to replace it"), "{}", out(&o));
    assert_eq!(std::fs::read_to_string(path).unwrap(), "precious");
}
