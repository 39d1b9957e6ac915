//! The `stickwarden` binary: parses the command line, sets up tracing, runs the subcommand and
//! turns its outcome into an exit code (0 ok, 1 runtime failure, 2 bad usage or input, 64 bad
//! configuration).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = stickwarden::cli::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STICKWARDEN_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stickwarden: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(stickwarden::cli::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("stickwarden: {:#}", failure.error);
            std::process::ExitCode::from(failure.code as u8)
        }
    }
}
