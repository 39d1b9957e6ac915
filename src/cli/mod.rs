//! The `stickwarden` subcommands: arguments (clap), dispatch, and the mapping of failures to exit
//! codes (0 ok, 1 runtime failure, 2 bad usage or bad input, 64 bad configuration). Input is
//! validated before any socket is opened, so a malformed address or filter changes nothing.

/// `println!` for the subcommands: a standard output closed by the reader (`| head -1`) ends the
/// command quietly ([`Failure::output`]) instead of panicking.
macro_rules! say {
    () => { $crate::cli::say_line(format_args!("")) };
    ($($t:tt)*) => { $crate::cli::say_line(format_args!($($t)*)) };
}

mod demo;
mod ops;
mod run;
mod simulate;
mod store;
pub mod systemd;
mod table;

use clap::{Parser, Subcommand};

use crate::client::ClientError;

/// Exit code of a runtime failure (HAProxy unreachable, an error answered by HAProxy).
pub const EXIT_RUNTIME: i32 = 1;
/// Exit code of bad usage or bad input, detected before anything is sent.
pub const EXIT_USAGE: i32 = 2;
/// Exit code of a bad configuration file.
pub const EXIT_CONFIG: i32 = 64;

#[derive(Debug, Parser)]
#[command(name = "stickwarden", version, about = "Adaptive security controller for HAProxy stick tables")]
pub struct Args {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Read a live stick table (list the tables when NAME is omitted).
    Table(table::TableArgs),
    /// Start a sandbox HAProxy on loopback and the controller with the shipped rules, send it
    /// abusive, normal and allowlisted traffic, and watch blocks escalate and end.
    Demo(demo::DemoArgs),
    /// Run the daemon: poll the tables, decide, block and release (until SIGTERM or SIGINT).
    Run(run::ConfigArgs),
    /// Validate the configuration and rules, then verify each HAProxy target: tables, stored
    /// data types, the block ACL and the socket's level.
    Check(run::ConfigArgs),
    /// Print the HAProxy configuration lines the configuration needs: the socket at the right
    /// level, each table and the columns its rules read, the tracking line, the denies, the
    /// graduated responses and suspects mode, each part under a heading saying where it goes.
    HaproxyConfig(run::ConfigArgs),
    /// Active blocks.
    Blocks(ops::Access),
    /// Offences, blocks and releases of one address.
    History(ops::KeyArgs),
    /// Why an address is (or is not) blocked: rules, live counters, ladder step.
    Explain(ops::KeyArgs),
    /// Block an address or CIDR by hand (overrides automatic decisions).
    Block(ops::BlockArgs),
    /// Release a block now: tag, ACL entry and the block record.
    Unblock(ops::UnblockArgs),
    /// Move the end of an active block: it ends --for DUR from now (rule, level, actions stay).
    Extend(ops::ExtendArgs),
    /// Add (or --remove) an allowlist entry; blocks inside it are released.
    Allow(ops::AllowArgs),
    /// Block a list of addresses and CIDRs (one per line), through the ACL, atomically.
    Import(ops::ImportArgs),
    /// The audit log.
    Audit(ops::AuditArgs),
    /// Run a rule set offline over recorded `show table` dumps: who would be blocked, when, why.
    Simulate(simulate::SimulateArgs),
    /// Print the completion script of a shell (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages of stickwarden and of every subcommand into DIR.
    Man { dir: std::path::PathBuf },
    /// The store: verify it, recover a damaged one, back it up, restore a backup.
    Store {
        #[command(subcommand)]
        cmd: store::StoreCmd,
    },
}

impl Args {
    /// The log level when STICKWARDEN_LOG is not set: the daemon says what it decides.
    pub fn default_log_level(&self) -> &'static str {
        match self.command {
            Cmd::Run(_) => "stickwarden=info",
            // The demo prints what happens itself; warnings and errors still show.
            _ => "warn",
        }
    }
}

/// A failed subcommand: what went wrong and the exit code that says which kind of failure it was.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
        Failure { code: EXIT_USAGE, error: error.into() }
    }

    pub fn runtime(error: impl Into<anyhow::Error>) -> Failure {
        Failure { code: EXIT_RUNTIME, error: error.into() }
    }

    /// A write to standard output failed. When the reader went away (`| head -1`) that is no
    /// failure: the command stops, and exits 0 without a word ([`Failure::is_quiet`]).
    pub fn output(e: std::io::Error) -> Failure {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Failure { code: EXIT_QUIET, error: e.into() };
        }
        Failure::runtime(anyhow::Error::from(e).context("cannot write to standard output"))
    }

    /// Whether this ends the command without an error (standard output closed by its reader).
    pub fn is_quiet(&self) -> bool {
        self.code == EXIT_QUIET
    }
}

/// An error and its causes, each said once: a message that already ends with its cause's text
/// (`cannot read x: No such file (os error 2)`) is not followed by that cause again.
pub fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// The code of a quiet stop: the reader of standard output went away.
const EXIT_QUIET: i32 = 0;

/// One line on standard output ([`say!`]), every part of it between line breaks made
/// [`printable`](crate::output::printable): a reason or key cannot move the cursor or reorder text.
pub(crate) fn say_line(args: std::fmt::Arguments<'_>) -> Result<(), Failure> {
    use std::io::Write;
    let text = args.to_string();
    let safe: Vec<_> = text.split('\n').map(crate::output::printable).collect();
    let mut out = std::io::stdout().lock();
    out.write_all(safe.join("\n").as_bytes()).and_then(|()| out.write_all(b"\n")).map_err(Failure::output)
}

/// Prints a listing for people on standard output (see `output::columns`).
pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>]) -> Result<(), Failure> {
    let colour = crate::output::columns::colour();
    crate::output::columns::write_table(&mut std::io::stdout().lock(), headers, rows, colour).map_err(Failure::output)
}

impl From<ClientError> for Failure {
    /// Refusals of our own validation are bad input; everything else happened at run time.
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::Command(_) | ClientError::Key(_) => Failure::usage(e),
            _ => Failure::runtime(e),
        }
    }
}

pub async fn run(args: Args) -> Result<(), Failure> {
    match args.command {
        Cmd::Table(a) => table::run(a).await,
        Cmd::Demo(a) => demo::run(a).await,
        Cmd::Run(a) => run::run(a).await,
        Cmd::Check(a) => run::check(a).await,
        Cmd::HaproxyConfig(a) => run::haproxy_config(a),
        Cmd::Blocks(a) => ops::blocks(a).await,
        Cmd::History(a) => ops::history(a).await,
        Cmd::Explain(a) => ops::explain(a).await,
        Cmd::Block(a) => ops::block(a).await,
        Cmd::Unblock(a) => ops::unblock(a).await,
        Cmd::Extend(a) => ops::extend(a).await,
        Cmd::Allow(a) => ops::allow(a).await,
        Cmd::Import(a) => ops::import(a).await,
        Cmd::Audit(a) => ops::audit(a).await,
        Cmd::Simulate(a) => simulate::run(a),
        Cmd::Store { cmd } => store::run(cmd).await,
        Cmd::Completions { shell } => completions(shell),
        Cmd::Man { dir } => man(&dir),
    }
}

/// Prints the completion script of `shell`, made from the CLI definition.
fn completions(shell: clap_complete::Shell) -> Result<(), Failure> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "stickwarden", &mut out);
    use std::io::Write;
    std::io::stdout().lock().write_all(&out).map_err(Failure::output)
}

/// Writes `stickwarden.1` and one page per subcommand (`stickwarden-run.1`, ...) into `dir`.
fn man(dir: &std::path::Path) -> Result<(), Failure> {
    use clap::CommandFactory;
    let io =
        |e: std::io::Error| Failure::runtime(anyhow::anyhow!("cannot write the man pages in {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let cmd = Args::command();
    let mut pages = vec![("stickwarden".to_owned(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("stickwarden-{}", sub.get_name());
        let bin = format!("stickwarden {}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name).bin_name(bin)));
        for inner in sub.get_subcommands() {
            let name = format!("stickwarden-{}-{}", sub.get_name(), inner.get_name());
            let bin = format!("stickwarden {} {}", sub.get_name(), inner.get_name());
            pages.push((name.clone(), inner.clone().name(name).bin_name(bin)));
        }
    }
    for (name, page) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out).map_err(io)?;
        std::fs::write(dir.join(format!("{name}.1")), out).map_err(io)?;
        say!("{}", dir.join(format!("{name}.1")).display())?;
    }
    Ok(())
}
