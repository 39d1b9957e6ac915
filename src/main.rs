//! The `stickwarden` binary: parses the command line, sets up tracing, runs the subcommand and
//! turns its outcome into an exit code (0 ok, 1 runtime failure, 2 bad usage or input, 64 bad
//! configuration).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = stickwarden::cli::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STICKWARDEN_LOG")
                .unwrap_or_else(|_| args.default_log_level().into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: not in journald or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr (a log pipe gone) must not take the daemon down: tracing's own report of
        // the failed write would be an eprintln!, which panics on a closed stderr.
        .log_internal_errors(false)
        .init();
    // One thread: the CLI's work is one pipeline (socket, parser, output) and HAProxy needs a core
    // of its own to produce the dump; see docs/BENCHMARKS.md for the measurements.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stickwarden: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(stickwarden::cli::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(failure) if failure.is_quiet() => std::process::ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("stickwarden: {}", stickwarden::cli::describe(&failure.error));
            std::process::ExitCode::from(failure.code as u8)
        }
    }
}
