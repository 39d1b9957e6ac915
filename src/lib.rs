//! stickwarden: an adaptive security controller for HAProxy stick tables.
//!
//! # Layout
//! - [`target`]: Runtime API addresses (`unix:/path`, `tcp:host:port`, bare path), parsed and checked.
//! - [`proto`]: the protocol with no I/O: commands and their encoding, key validation, answer
//!   framing, error classification, and streaming parsers of `show table`, `show info`,
//!   `show acl`, `show sess`. Tested on text captured from real HAProxy 2.6 and 3.4.
//! - [`client`]: one connection actor per target, commands pipelined over a persistent interactive
//!   connection, typed results, reconnection with backoff, streamed table dumps.
//! - [`output`]: how tables and entries are printed for people (aligned columns) and programs
//!   (JSON Lines), written as they stream.
//! - [`sandbox`]: a throw-away HAProxy on loopback with a temp-dir socket, and a tiny HTTP client
//!   bound to chosen loopback source addresses; used by `stickwarden demo` and by the tests.
//! - [`cli`]: the `stickwarden` subcommands, their arguments and exit codes.

pub mod cli;
pub mod client;
pub mod output;
pub mod proto;
pub mod sandbox;
pub mod target;

pub use client::{Client, ClientError, ClientOptions};
pub use target::Target;
