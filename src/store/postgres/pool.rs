//! The store's connections to PostgreSQL: a few threads, each holding one blocking
//! [`postgres::Client`], that run the jobs the synchronous [`crate::store::Backend`] calls hand
//! them. The blocking client runs tokio-postgres on a runtime of its own, which may not be
//! started from a thread of the daemon's runtime; a thread per connection keeps both apart, and
//! lets any caller (an API handler, the blocking pool, a CLI command) call the store the same way.
//! A connection that broke is made again at the next job; a job that finds the database
//! unreachable fails with what was wrong, never waits forever.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::PgError;

/// One job: given a connection (or why none could be made), does its work and sends its answer.
type Job = Box<dyn FnOnce(Result<&mut postgres::Client, PgError>) + Send>;

/// A connection idle longer than this is checked before it is used.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The connection threads and the queue in front of them.
#[derive(Debug)]
pub struct Pool {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Pool {
    /// `size` threads connecting with `config`; none connects before its first job.
    pub fn new(config: postgres::Config, size: usize) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..size.max(1) {
            let (rx, config) = (rx.clone(), config.clone());
            std::thread::Builder::new()
                .name(format!("pg-store-{i}"))
                .spawn(move || worker(&config, &rx))
                .expect("a thread for a store connection");
        }
        Pool { jobs: Mutex::new(Some(tx)) }
    }

    /// Runs `f` on a connection and returns its answer.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<R, PgError> + Send + 'static,
    ) -> Result<R, PgError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |client| {
            let _ = tx.send(client.and_then(f));
        });
        let sent = self.jobs.lock().expect("pool lock").as_ref().map(|jobs| jobs.send(job));
        match sent {
            Some(Ok(())) => rx.recv().unwrap_or_else(|_| Err(PgError::Gone)),
            _ => Err(PgError::Gone),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // The threads end when the queue closes.
        self.jobs.lock().expect("pool lock").take();
    }
}

fn worker(config: &postgres::Config, jobs: &Mutex<mpsc::Receiver<Job>>) {
    let mut client: Option<postgres::Client> = None;
    let mut used = std::time::Instant::now();
    loop {
        let job = match jobs.lock().expect("pool lock").recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        // A connection idle for a while may have been closed by a server that restarted: it
        // is checked (one empty query) rather than given to a job that would fail on it.
        let stale = used.elapsed() > IDLE_CHECK;
        if client.as_mut().is_some_and(|c| c.is_closed() || stale && c.is_valid(CONNECT_TIMEOUT).is_err()) {
            client = None;
        }
        used = std::time::Instant::now();
        if client.is_none() {
            match config.connect(postgres::NoTls) {
                Ok(c) => client = Some(c),
                Err(e) => {
                    job(Err(PgError::Unreachable(super::describe(&e))));
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected above");
        job(Ok(c));
    }
}
