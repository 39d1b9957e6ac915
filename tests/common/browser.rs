//! Headless Chromium driven through WebDriver, for the console's browser tests: Debian's
//! `chromedriver` started on a loopback port with a fresh profile in a temp dir, killed on drop.
//! The W3C WebDriver protocol is JSON over HTTP; the dozen commands the tests use are spoken here
//! directly over a std `TcpStream` (a client crate would bring more than it saves).
//!
//! A missing `chromedriver` or `chromium` fails the test with the command that installs them:
//! `make test` installs both.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// [`stickwarden::sandbox::http_exchange`], failing the test on an I/O error.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, String) {
    stickwarden::sandbox::http_exchange(port, method, path, headers, body).unwrap()
}

/// The key WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

fn found(env: &str, default: &str) -> String {
    let p = std::env::var(env).unwrap_or_else(|_| default.to_owned());
    assert!(
        Path::new(&p).exists(),
        "{p} is missing: the console's browser tests need Debian's chromium and chromium-driver \
         (`make test` installs them; or: sudo apt-get install -y chromium chromium-driver)"
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Browser {
    /// A new headless browser. `CHROMEDRIVER` and `CHROMIUM` override where they are.
    pub fn start() -> Browser {
        Browser::start_with(&[])
    }

    /// A browser that runs no script at all.
    pub fn start_without_javascript() -> Browser {
        Browser::start_with(&["--blink-settings=scriptEnabled=false"])
    }

    fn start_with(extra: &[&str]) -> Browser {
        let driver_bin = found("CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = found("CHROMIUM", "/usr/bin/chromium");
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser { driver, port, session: String::new(), _profile: profile };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1280,1300".into(),
            format!("--user-data-dir={}", b._profile.path().display()),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args }
        }}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_owned();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, _, text) =
            http(self.port, method, path, &[("Content-Type", "application/json; charset=utf-8")], body.as_bytes());
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("WebDriver answer {status}: {e}: {text}"))?;
        if status != 200 {
            return Err(format!("WebDriver {method} {path}: {status}: {}", v["value"]["message"]));
        }
        Ok(v["value"].clone())
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.call("GET", &self.s("/url"), None).as_str().unwrap_or_default().to_owned()
    }

    /// The page's HTML as the browser holds it now.
    pub fn source(&self) -> String {
        self.call("GET", &self.s("/source"), None).as_str().unwrap_or_default().to_owned()
    }

    /// The visible text of the page.
    pub fn body_text(&self) -> String {
        self.text("body")
    }

    /// The element `css` selects, if there is one.
    pub fn try_find(&self, css: &str) -> Option<String> {
        let body = json!({ "using": "css selector", "value": css }).to_string();
        let (status, _, text) =
            http(self.port, "POST", &self.s("/element"), &[("Content-Type", "application/json")], body.as_bytes());
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&text).ok()?;
        v["value"][ELEMENT].as_str().map(str::to_owned)
    }

    pub fn find(&self, css: &str) -> String {
        self.try_find(css).unwrap_or_else(|| panic!("no element '{css}' on {}:\n{}", self.url(), self.body_text()))
    }

    /// The text of the element `css` selects; found again if the page changed under it (a
    /// navigation or a live update) between finding and reading.
    pub fn text(&self, css: &str) -> String {
        for _ in 0..20 {
            if let Some(t) = self.try_text(css) {
                return t;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let e = self.find(css);
        self.call("GET", &self.s(&format!("/element/{e}/text")), None).as_str().unwrap_or_default().to_owned()
    }

    fn try_text(&self, css: &str) -> Option<String> {
        let e = self.try_find(css)?;
        let v = self.try_call("GET", &self.s(&format!("/element/{e}/text")), None).ok()?;
        v.as_str().map(str::to_owned)
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call("POST", &self.s(&format!("/element/{e}/clear")), Some(json!({})));
        self.call("POST", &self.s(&format!("/element/{e}/value")), Some(json!({ "text": text })));
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &self.s(&format!("/element/{e}/click")), Some(json!({})));
    }

    /// Runs `js` (an async function body that calls `arguments[arguments.length - 1]` with its
    /// result) in the page.
    pub fn run_async(&self, js: &str) -> Value {
        self.call("POST", &self.s("/execute/async"), Some(json!({ "script": js, "args": [] })))
    }

    pub fn run(&self, js: &str) -> Value {
        self.call("POST", &self.s("/execute/sync"), Some(json!({ "script": js, "args": [] })))
    }

    /// Waits up to `within` for the page's text to contain `want` (live updates, redirects).
    pub fn wait_for_text(&self, want: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.try_text("body").is_some_and(|t| t.contains(want)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the window, written to `path`.
    pub fn screenshot(&self, path: &Path) {
        let b64 = self.call("GET", &self.s("/screenshot"), None);
        let png = base64(b64.as_str().unwrap_or_default());
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                http(self.port, "DELETE", &self.s(""), &[], b"");
            }));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (the screenshot's encoding), decoded.
fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
