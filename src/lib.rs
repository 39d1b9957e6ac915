//! stickwarden: an adaptive security controller for HAProxy stick tables.
//!
//! # Layout
//! Lowest first: each module uses only modules listed above it, so no module imports one that
//! imports it back (`tests/layout.rs` checks both against the code).
//! - [`target`]: Runtime API addresses (`unix:/path`, `tcp:host:port`, bare path), parsed and checked.
//! - [`proto`]: the protocol with no I/O: commands and their encoding, key validation, answer
//!   framing, error classification, and streaming parsers of `show table`, `show info`,
//!   `show acl`, `show sess`. Tested on text captured from real HAProxy 2.6 and 3.4.
//! - [`net`]: addresses and networks in the one canonical form blocks are keyed by, and the one
//!   containment rule.
//! - [`key`]: what blocks, offenders and audit records are about: an address or network, or a
//!   key of a table keyed by something else (string, integer), validated against its type.
//! - [`client`]: one connection actor per target, commands pipelined over a persistent interactive
//!   connection, typed results, reconnection with backoff, streamed table dumps.
//! - [`output`]: how tables and entries are printed for people (aligned columns) and programs
//!   (JSON Lines), written as they stream.
//! - [`time`]: instants as the store keeps them (ms since the epoch, RFC 3339 for people).
//! - [`lease`]: how long this controller may still act on HAProxy (a leader's lease on a shared
//!   store; for ever on the embedded one).
//! - [`checked`]: checked TOML, below every file reader: errors at file:line:column, the value
//!   types (durations, networks, times) and their limits.
//! - [`rules`]: rule files, conditions, the scoring and escalation policy, and the server-side
//!   filters derived from them ([`rules::filters`]).
//! - [`suspects`]: suspects mode: HAProxy flags offenders in a small table (the lines it needs,
//!   and which rules it can vouch for), so that a poll costs the suspects, not the whole table.
//! - [`sandbox`]: a throw-away HAProxy on loopback with a temp-dir socket, and a tiny HTTP client
//!   bound to chosen loopback source addresses; used by `stickwarden demo` and by the tests.
//! - [`pg_sandbox`]: a throw-away PostgreSQL in a temp dir on a loopback port, run as an
//!   unprivileged user; for the tests and benches of the shared store.
//! - [`fleet`]: how the values of several HAProxy nodes are merged into one view of an address.
//! - [`config`]: `stickwarden.toml`, parsed and checked (errors with file:line:column).
//! - [`columns`]: how a column is named in HAProxy's filters (array elements differ by version).
//! - [`store`]: offenders, active blocks, allowlist and audit log behind the [`store::Backend`]
//!   seam, sled the embedded backend and PostgreSQL the shared one (with who leads on it, and
//!   the fence that refuses a stale leader's writes); the manifest that detects a damaged or
//!   rolled-back sled database, and the backup format (also the way between backends).
//! - [`poll`]: one poll of a table: the query plan, the filtered walk evaluating every rule,
//!   suspects mode's flags, the sweep; below the daemon and `check`, which both use it.
//! - [`engine`]: pure scoring arithmetic: decaying scores, offences, ladder steps.
//! - [`allowlist`]: networks never blocked (config, never-block list, operator entries).
//! - [`metrics`]: Prometheus metrics shared by pollers, controller, actuators and the API.
//! - [`actuator`]: one actor per target turning block and release jobs into Runtime API commands.
//! - [`haproxy_side`]: the HAProxy lines a configuration needs (`stickwarden haproxy-config`),
//!   and the `stats socket` line for a level.
//! - [`ops`]: operator actions and queries (requests, validation, views, the listing of active
//!   blocks), shared by API, console and CLI.
//! - [`decide`]: the decider: every decision (score, block, escalate, aggregate, release, repair,
//!   operator actions) as a pure step of state, input and `now`, returning the effects to carry out.
//! - [`check`]: what `stickwarden check` verifies on each target before the daemon relies on it.
//! - [`daemon`]: `stickwarden run`: pollers, and the controller: the I/O shell around the decider;
//!   on a shared store, one leader among several controllers ([`daemon::ha`]).
//! - [`simulate`]: a rule set run offline over recorded dumps through the decider, on a simulated clock.
//! - [`recover`]: `store recover`: a damaged store rebuilt from what it still holds, a backup and
//!   what HAProxy holds of keys stickwarden blocked.
//! - [`api`]: the HTTP API (axum): routes, token auth, JSON errors; its server and the CLI's client.
//! - [`console`]: the review console under `/ui/` (server-rendered pages, sessions, charts), on
//!   the API's state and listeners.
//! - [`cli`]: the `stickwarden` subcommands, their arguments and exit codes.

pub mod actuator;
pub mod allowlist;
pub mod api;
pub mod check;
pub mod checked;
pub mod cli;
pub mod client;
pub mod columns;
pub mod config;
pub mod console;
pub mod daemon;
pub mod decide;
pub mod engine;
pub mod fleet;
pub mod haproxy_side;
pub mod key;
pub mod lease;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod output;
pub mod pg_sandbox;
pub mod poll;
pub mod proto;
pub mod recover;
pub mod rules;
pub mod sandbox;
pub mod simulate;
pub mod store;
pub mod suspects;
pub mod target;
pub mod time;

pub use client::{Client, ClientError, ClientOptions};
pub use target::Target;
