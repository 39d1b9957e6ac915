//! Console logins: a token presented once on the login form becomes a session, kept in the
//! daemon's memory under a random 256-bit id that only the session cookie carries (HttpOnly,
//! SameSite=Strict, `Path=/ui/`, Secure when the console is reached over TLS through a proxy).
//! Each session has its own random CSRF token that every form posts back; it is compared in
//! constant time. Sessions end at logout, after `[api] console_session`, or when the daemon stops
//! (a restart logs everyone out: nothing about a session is ever written to disk).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use subtle::ConstantTimeEq;

use crate::config::tokens::{hex, Role};
use crate::time::{ms, Millis};

/// The cookie's name.
pub const COOKIE: &str = "stickwarden_session";
/// Sessions kept at most: a login beyond it ends the oldest session.
pub const MAX_SESSIONS: usize = 10_000;

/// A logged-in console user.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token's name: the actor of every action taken in the session.
    pub name: String,
    pub role: Role,
    pub csrf: String,
    pub expires: Millis,
}

impl Session {
    /// Whether `presented` is this session's CSRF token.
    pub fn csrf_ok(&self, presented: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// Every open session, by id.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    open: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex(&bytes))
}

impl Sessions {
    pub fn new(ttl: Duration) -> Sessions {
        Sessions { ttl, open: Mutex::new(HashMap::new()) }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new session for the token `name` with `role`: its id (the cookie's value) and itself.
    pub fn start(&self, name: &str, role: Role, now: Millis) -> std::io::Result<(String, Session)> {
        let id = random_hex()?;
        let session = Session { name: name.to_owned(), role, csrf: random_hex()?, expires: now + ms(self.ttl) };
        let mut open = self.open.lock().expect("sessions lock");
        open.retain(|_, s| s.expires > now);
        if open.len() >= MAX_SESSIONS {
            if let Some(oldest) = open.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone()) {
                open.remove(&oldest);
            }
        }
        open.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The session of the cookie value `id`, if it is open and has not expired.
    pub fn get(&self, id: &str, now: Millis) -> Option<Session> {
        let mut open = self.open.lock().expect("sessions lock");
        match open.get(id) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                open.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn end(&self, id: &str) {
        self.open.lock().expect("sessions lock").remove(id);
    }
}

/// The session id in a `Cookie` header, if any.
pub fn cookie_value(header: &str) -> Option<&str> {
    header.split(';').filter_map(|c| c.trim().split_once('=')).find(|(k, _)| *k == COOKIE).map(|(_, v)| v)
}

/// The `Set-Cookie` value of a new session (`secure`: reached over TLS).
pub fn set_cookie(id: &str, ttl: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/ui/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", ttl.as_secs())
}

/// The `Set-Cookie` value that ends the session in the browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/ui/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_end_and_stay_bounded() {
        let s = Sessions::new(Duration::from_secs(60));
        let (id, session) = s.start("alice", Role::Operator, 1_000).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, session.csrf);
        assert!(s.get(&id, 60_999).is_some());
        assert!(s.get(&id, 61_000).is_none(), "expired");
        assert!(s.get(&id, 1_000).is_none(), "and forgotten");
        let (id, session) = s.start("bob", Role::Viewer, 1_000).unwrap();
        assert!(session.csrf_ok(&session.csrf) && !session.csrf_ok("") && !session.csrf_ok(&id));
        s.end(&id);
        assert!(s.get(&id, 1_000).is_none());
        for _ in 0..MAX_SESSIONS + 5 {
            s.start("many", Role::Viewer, 2_000).unwrap();
        }
        assert_eq!(s.open.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn cookies() {
        assert_eq!(cookie_value("a=b; stickwarden_session=abc; c=d"), Some("abc"));
        assert_eq!(cookie_value("stickwarden_sessionx=abc"), None);
        let c = set_cookie("abc", Duration::from_secs(3600), true);
        assert_eq!(c, "stickwarden_session=abc; Path=/ui/; HttpOnly; SameSite=Strict; Max-Age=3600; Secure");
        assert!(!set_cookie("abc", Duration::from_secs(1), false).contains("Secure"));
    }
}
