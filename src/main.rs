//! The `spoke` binary: reads the command line and the configuration, starts logging,
//! and hands over to [`spoke::server::run`].
//!
//! Everything that can be tested without a process lives in the library
//! ([`spoke::cli`], [`spoke::config`]); this file only turns their results into output
//! and an exit status: 0 for success, 1 for a bad command line, a bad configuration or
//! a proxy that could not start, each with one line on stderr.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use spoke::cli::{self, Command};
use spoke::config::Config;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(e) => return fail(&format!("spoke: {e}")),
    };
    match command {
        Command::Help => print(cli::USAGE.trim_end()),
        Command::Version => print(cli::VERSION),
        Command::Check { config } => match Config::load(&config) {
            Ok(_) => print("config ok"),
            Err(e) => fail(&e.to_string()),
        },
        Command::Run { config } => {
            let config = match Config::load(&config) {
                Ok(config) => config,
                Err(e) => return fail(&e.to_string()),
            };
            start_logging(config.log_level);
            match spoke::server::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("spoke: {e}")),
            }
        }
    }
}

/// Prints a line to stdout. A closed stdout (`spoke --help | head -0`) is not worth a
/// panic, so a write error only changes the exit status.
fn print(line: &str) -> ExitCode {
    match writeln!(std::io::stdout(), "{line}") {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn fail(line: &str) -> ExitCode {
    // Nothing better can be done if stderr itself is gone.
    let _ = writeln!(std::io::stderr(), "{line}");
    ExitCode::FAILURE
}

/// Logs go to stderr, one line per event. Colours only on a terminal: termcolor's
/// `ColorChoice::Auto` looks at `TERM`, not at whether stderr is a terminal, so a
/// redirected log would otherwise fill with escape codes.
fn start_logging(level: log::LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        .set_location_level(log::LevelFilter::Off)
        .build();
    let started = if std::io::stderr().is_terminal() {
        simplelog::TermLogger::init(
            level,
            config,
            simplelog::TerminalMode::Stderr,
            simplelog::ColorChoice::Auto,
        )
    } else {
        simplelog::WriteLogger::init(level, config, std::io::stderr())
    };
    if let Err(e) = started {
        // Only possible if a logger is already set; the proxy can still run.
        let _ = writeln!(std::io::stderr(), "spoke: cannot start logging: {e}");
    }
}
