//! `kith`: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;
use kith_gui::cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Diagnostics only when asked for: `KITH_LOG=debug kith daemon`.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("KITH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init();
    }
    // Only a process that stays gives back its start-up pages; a one-off
    // command exits long before the first release.
    if cli.runs_until_stopped() {
        kith_process::keep_releasing_pages();
    }
    let mut stdout = std::io::stdout().lock();
    match run(&cli, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
